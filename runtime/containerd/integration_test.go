package containerd

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

func TestStartRunsConfinedInNamespace(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	spec := payloadSpec("web-1", "echo", "hello from payload", "env", "sleep", "inf")
	spec.Env = map[string]string{"GREETING": "hi"}
	spec.Labels = map[string]string{"team": "ml"}

	inst, err := r.Start(ctx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	if inst.Status != runtime.StatusRunning || inst.ContainerID != "web-1" || inst.Pid == 0 {
		t.Fatalf("instance = %+v", inst)
	}
	for _, typ := range []string{events.TypeInstancePulling, events.TypeInstanceCreating, events.TypeInstanceRunning} {
		rec.WaitFor(t, "web-1", typ, 10*time.Second)
	}

	// An operator sees it with ctr.
	out, err := exec.Command("ctr", "--address", daemon.Address, "-n", ns, "containers", "ls").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "web-1") {
		t.Fatalf("ctr containers ls: %v\n%s", err, out)
	}
	out, err = exec.Command("ctr", "--address", daemon.Address, "-n", ns, "tasks", "ls").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "RUNNING") {
		t.Fatalf("ctr tasks ls: %v\n%s", err, out)
	}

	cl, cctx := rawClient(t, daemon.Address, ns)
	c, err := cl.LoadContainer(cctx, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(cctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Runtime.Name != RuncRuntime {
		t.Errorf("runtime = %q, want %q", info.Runtime.Name, RuncRuntime)
	}
	for k, want := range map[string]string{
		runtime.LabelInstanceID:          "web-1",
		runtime.LabelAgentID:             "test-agent",
		runtime.LabelSpecHash:            spec.Hash(),
		runtime.LabelImage:               payloadRef,
		runtime.LabelUserPrefix + "team": "ml",
	} {
		if info.Labels[k] != want {
			t.Errorf("label %s = %q, want %q", k, info.Labels[k], want)
		}
	}
	s, err := c.Spec(cctx)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Process.NoNewPrivileges || s.Linux.Seccomp == nil {
		t.Errorf("not confined: no_new_privileges=%v seccomp=%v", s.Process.NoNewPrivileges, s.Linux.Seccomp != nil)
	}
	for _, m := range s.Mounts {
		if m.Type == "bind" {
			t.Errorf("host mount in tenant spec: %+v", m)
		}
	}

	// The shim writes output to the log file.
	var logs string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _, err := r.Logs(ctx(t), "web-1", 100)
		if err != nil {
			t.Fatal(err)
		}
		if logs = string(b); strings.Contains(logs, "GREETING=hi") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range []string{"hello from payload", "GREETING=hi", "PAYLOAD_IMAGE=1"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	if tail, _, _ := r.Logs(ctx(t), "web-1", 1); strings.Count(string(tail), "\n") != 1 {
		t.Errorf("tail=1 returned %q", tail)
	}

	list, err := r.List(ctx(t))
	if err != nil || len(list) != 1 || list[0].ID != "web-1" || list[0].Labels["team"] != "ml" {
		t.Fatalf("List = %+v, %v", list, err)
	}
}

func TestStartIsIdempotentAndConflicts(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	spec := payloadSpec("idem-1", "sleep", "inf")

	first, err := r.Start(ctx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	again, err := r.Start(ctx(t), spec)
	if err != nil {
		t.Fatalf("repeat start: %v", err)
	}
	if again.ContainerID != first.ContainerID || again.Pid != first.Pid {
		t.Fatalf("repeat start gave %+v, first %+v", again, first)
	}
	if n := rec.Count("idem-1", events.TypeInstanceCreating); n != 1 {
		t.Errorf("%d creating events, want 1", n)
	}

	changed := spec
	changed.Env = map[string]string{"X": "1"}
	_, err = r.Start(ctx(t), changed)
	if !errdefs.IsConflict(err) {
		t.Fatalf("conflicting start: err = %v, want Conflict", err)
	}
	list, _ := r.List(ctx(t))
	if len(list) != 1 {
		t.Fatalf("%d instances after repeats, want 1", len(list))
	}

	// Concurrent identical starts of a new instance create one container.
	var wg sync.WaitGroup
	pids := make([]uint32, 5)
	errs := make([]error, 5)
	for i := range 5 {
		wg.Go(func() {
			inst, err := r.Start(ctx(t), payloadSpec("idem-2", "sleep", "inf"))
			pids[i], errs[i] = inst.Pid, err
		})
	}
	wg.Wait()
	for i := range 5 {
		if errs[i] != nil || pids[i] != pids[0] {
			t.Fatalf("concurrent start %d: pid %d (first %d), err %v", i, pids[i], pids[0], errs[i])
		}
	}
}

func TestExitCodeReported(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	if _, err := r.Start(ctx(t), payloadSpec("exit-7", "echo", "bye", "exit", "7")); err != nil {
		t.Fatal(err)
	}
	e := rec.WaitFor(t, "exit-7", events.TypeInstanceExited, 20*time.Second)
	if e.ExitCode == nil || *e.ExitCode != 7 || e.Status != "exited" {
		t.Fatalf("exit event = %+v", e)
	}
	inst, err := r.Get(ctx(t), "exit-7")
	if err != nil {
		t.Fatal(err)
	}
	if inst.Status != runtime.StatusExited || inst.ExitCode == nil || *inst.ExitCode != 7 || inst.FinishedAt.IsZero() {
		t.Fatalf("Get after exit = %+v", inst)
	}
	// Reported once, although both the task's wait and the event stream see it.
	time.Sleep(500 * time.Millisecond)
	if n := rec.Count("exit-7", events.TypeInstanceExited); n != 1 {
		t.Errorf("%d exit events, want 1", n)
	}
	if err := r.Terminate(ctx(t), "exit-7", time.Second); err != nil {
		t.Fatalf("terminate exited instance: %v", err)
	}
}

func TestTerminateKillsAfterTimeoutAndCleansUp(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	if _, err := r.Start(ctx(t), payloadSpec("stubborn", "ignore-term", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Start(ctx(t), payloadSpec("polite", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}

	// Two concurrent terminates of one instance both succeed.
	const timeout = 1500 * time.Millisecond
	began := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = r.Terminate(ctx(t), "stubborn", timeout) })
	}
	wg.Wait()
	took := time.Since(began)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("terminate %d: %v", i, err)
		}
	}
	if took < timeout {
		t.Errorf("a process ignoring SIGTERM was gone after %s, before the %s timeout", took, timeout)
	}
	e := rec.WaitFor(t, "stubborn", events.TypeInstanceExited, 5*time.Second)
	if e.ExitCode == nil || *e.ExitCode != 128+int(syscall.SIGKILL) {
		t.Errorf("stubborn exit = %+v, want SIGKILL's 137", e)
	}
	rec.WaitFor(t, "stubborn", events.TypeInstanceTerminating, time.Second)
	rec.WaitFor(t, "stubborn", events.TypeInstanceTerminated, time.Second)
	if n := rec.Count("stubborn", events.TypeInstanceTerminated); n != 1 {
		t.Errorf("%d terminated events for one termination", n)
	}

	// A process that honours SIGTERM ends early with its own code.
	if err := r.Terminate(ctx(t), "polite", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if e := rec.WaitFor(t, "polite", events.TypeInstanceExited, 5*time.Second); e.ExitCode == nil || *e.ExitCode != 143 {
		t.Errorf("polite exit = %+v, want 143", e)
	}

	assertNothingLeft(t, ns)
	if err := r.Terminate(ctx(t), "stubborn", time.Second); !errdefs.IsNotFound(err) {
		t.Fatalf("terminate of a gone instance: %v, want NotFound", err)
	}
	if _, err := r.Get(ctx(t), "stubborn"); !errdefs.IsNotFound(err) {
		t.Fatalf("Get of a gone instance: %v, want NotFound", err)
	}
}

func TestFailedStartLeavesNothing(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)

	_, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "bad-image", Image: registry.Host + "/no-such-image:latest"})
	var se *runtime.StepError
	if !errors.As(err, &se) || se.Step != runtime.StepPull || !errdefs.IsNotFound(err) {
		t.Fatalf("bad image: err = %v, want a pull StepError of kind NotFound", err)
	}
	if e := rec.WaitFor(t, "bad-image", events.TypeInstanceFailed, time.Second); e.Step != "pull" || e.Error == "" {
		t.Errorf("failed event = %+v", e)
	}

	spec := payloadSpec("bad-cmd")
	spec.Entrypoint = []string{"/no/such/binary"}
	_, err = r.Start(ctx(t), spec)
	if !errors.As(err, &se) || se.Step != runtime.StepStart {
		t.Fatalf("bad entrypoint: err = %v, want a start StepError", err)
	}
	assertNothingLeft(t, ns)

	// The same ID can be used once the cause is fixed.
	if _, err := r.Start(ctx(t), payloadSpec("bad-cmd", "sleep", "inf")); err != nil {
		t.Fatalf("start after failed start: %v", err)
	}
}

func TestResourcesEnforced(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns := testNamespace(t)
	r := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())
	spec := payloadSpec("limited", "statfs", "/dev/shm", "sleep", "inf")
	spec.Resources = runtime.Resources{CPUs: 0.5, MemoryMB: 64, Pids: 50, ShmMB: 16}
	if _, err := r.Start(ctx(t), spec); err != nil {
		t.Fatal(err)
	}
	cl, cctx := rawClient(t, daemon.Address, ns)
	c, err := cl.LoadContainer(cctx, "limited")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Spec(cctx)
	if err != nil {
		t.Fatal(err)
	}
	res := s.Linux.Resources
	if res.Memory == nil || *res.Memory.Limit != 64<<20 {
		t.Errorf("memory limit = %+v", res.Memory)
	}
	if res.CPU == nil || *res.CPU.Quota != 50000 || *res.CPU.Period != 100000 {
		t.Errorf("cpu = %+v", res.CPU)
	}
	if res.Pids == nil || *res.Pids.Limit != 50 {
		t.Errorf("pids = %+v", res.Pids)
	}
	// The kernel enforces them: the cgroup files on the host hold the limits.
	for file, want := range map[string]string{
		"pids/pids.max":                "50",
		"memory/memory.limit_in_bytes": "67108864",
		"cpu/cpu.cfs_quota_us":         "50000",
	} {
		if got := readCgroup(t, s.Linux.CgroupsPath, file); got != want {
			t.Errorf("cgroup %s = %q, want %q", file, got, want)
		}
	}
	// Inside the container: a 16 MiB /dev/shm.
	var logs string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, _, _ := r.Logs(ctx(t), "limited", 10)
		if logs = string(b); logs != "" {
			break
		}
	}
	if logs != "16777216\n" {
		t.Errorf("/dev/shm size inside the container = %q, want 16 MiB", logs)
	}
}

// readCgroup reads a v1 controller file of the container's cgroup, or its
// unified (v2) equivalent.
func readCgroup(t *testing.T, cgPath, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", filepath.Dir(file), cgPath, filepath.Base(file)))
	if err != nil {
		v2 := map[string]string{"pids.max": "pids.max", "memory.limit_in_bytes": "memory.max", "cpu.cfs_quota_us": "cpu.max"}[filepath.Base(file)]
		b, err = os.ReadFile(filepath.Join("/sys/fs/cgroup", cgPath, v2))
		if err != nil {
			t.Fatalf("read cgroup %s of %s: %v", file, cgPath, err)
		}
		return strings.Fields(string(b))[0]
	}
	return strings.TrimSpace(string(b))
}

// assertNothingLeft fails unless the namespace holds no container, task or
// snapshot.
func assertNothingLeft(t *testing.T, ns string) {
	t.Helper()
	cl, cctx := rawClient(t, daemon.Address, ns)
	cs, err := cl.Containers(cctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		t.Errorf("container %s left behind", c.ID())
	}
	var snaps []string
	err = cl.SnapshotService("").Walk(cctx, func(_ context.Context, i snapshots.Info) error {
		if i.Kind == snapshots.KindActive {
			snaps = append(snaps, i.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) > 0 {
		t.Errorf("active snapshots left behind: %v", snaps)
	}
	ls, err := cl.LeasesService().List(cctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		t.Errorf("lease %s left behind (labels %v)", l.ID, l.Labels)
	}
}

func TestPullProgressReported(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	const padding = 3 << 20
	ref, err := registry.PushPayloadWithPadding("slow:latest", padding)
	if err != nil {
		t.Fatal(err)
	}
	ns, rec := testNamespace(t), conformance.NewRecorder()
	be, err := New(Options{Address: daemon.Address, Namespace: ns, LogDir: t.TempDir(), Events: rec, ProgressInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r := withLifecycle(t, be, nil)
	registry.Throttle(2 << 20)
	defer registry.Throttle(0)
	if _, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "slow", Image: ref}); err != nil {
		t.Fatal(err)
	}
	var progress []events.PullProgress
	for _, e := range rec.All() {
		if e.Type == events.TypeInstancePullProgress && e.InstanceID == "slow" {
			progress = append(progress, *e.Progress)
		}
	}
	if len(progress) < 2 {
		t.Fatalf("%d progress events for a pull of over a second: %v", len(progress), progress)
	}
	for i, p := range progress {
		if p.TotalBytes < padding || p.DoneBytes > p.TotalBytes || (i > 0 && p.DoneBytes < progress[i-1].DoneBytes) {
			t.Fatalf("progress %d = %+v (all: %v)", i, p, progress)
		}
	}
	if first := progress[0]; first.DoneBytes == first.TotalBytes {
		t.Errorf("first progress already complete: %v", progress)
	}
}

func TestPullWithRegistryAuth(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	private, ref := ownRegistry(t, "private/payload:1", 1024)
	private.RequireBasicAuth("tenant", "s3cret-pass")
	ns := testNamespace(t)
	r := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())

	for _, tc := range []struct {
		id   string
		auth *runtime.RegistryAuth
	}{
		{"no-creds", nil},
		{"bad-creds", &runtime.RegistryAuth{Username: "tenant", Password: "wrong"}},
	} {
		_, err := r.Start(ctx(t), runtime.InstanceSpec{ID: tc.id, Image: ref, RegistryAuth: tc.auth})
		var se *runtime.StepError
		if !errors.As(err, &se) || se.Step != runtime.StepPull || !errdefs.IsUnauthorized(err) {
			t.Fatalf("%s: err = %v, want a pull failure of kind Unauthenticated", tc.id, err)
		}
	}
	inst, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "good-creds", Image: ref, Command: []string{"sleep", "inf"},
		RegistryAuth: &runtime.RegistryAuth{Username: "tenant", Password: "s3cret-pass"}})
	if err != nil || inst.Status != runtime.StatusRunning {
		t.Fatalf("pull with the right credentials: %+v %v", inst, err)
	}
}

// A tenant flooding its output keeps a bounded log and its newest lines.
func TestInstanceLogIsCapped(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns := testNamespace(t)
	logDir := t.TempDir()
	const max = 512 << 10
	be, err := New(Options{Address: daemon.Address, Namespace: ns, LogDir: logDir, LogMaxBytes: max, LogCheckInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r := withLifecycle(t, be, nil)
	if _, err := r.Start(ctx(t), payloadSpec("flood", "spam", "16000000", "echo", "flood done", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	var tail string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, _, err := r.Logs(ctx(t), "flood", 2)
		if err != nil {
			t.Fatal(err)
		}
		if tail = string(b); strings.Contains(tail, "flood done") {
			break
		}
	}
	if !strings.HasSuffix(tail, "flood done\n") || !strings.HasPrefix(tail, "spam ") {
		t.Fatalf("last lines = %q", tail)
	}
	time.Sleep(100 * time.Millisecond)
	fi, err := os.Stat(filepath.Join(logDir, "flood.log"))
	if err != nil {
		t.Fatal(err)
	}
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > max+(64<<10) {
		t.Fatalf("a 16 MB flood left %d bytes on disk, cap %d", used, max)
	}
}

// A caller that stops waiting does not abort a start: the pull goes on, the
// instance runs, and a retry of the same request gets it.
func TestStartOutlivesTheCaller(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	slow, ref := ownRegistry(t, "patient:latest", 2<<20)
	slow.Throttle(2 << 20)
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	spec := runtime.InstanceSpec{ID: "patient", Image: ref, Command: []string{"sleep", "inf"}}

	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	if _, err := r.Start(short, spec); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start with an impatient caller: %v, want DeadlineExceeded", err)
	}
	if waited := time.Since(began); waited > time.Second {
		t.Fatalf("the caller was kept %s past its deadline", waited)
	}
	inst, err := r.Start(ctx(t), spec)
	if err != nil || inst.Status != runtime.StatusRunning {
		t.Fatalf("retry: %+v %v", inst, err)
	}
	if n := rec.Count("patient", events.TypeInstancePulling); n != 1 {
		t.Errorf("%d pulls for one instance, want 1", n)
	}
}

// A terminate during a long pull calls the start off instead of waiting for
// it: nothing is left behind and the terminate succeeds.
func TestTerminateCallsOffAStartInProgress(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	slow, ref := ownRegistry(t, "endless:latest", 4<<20)
	slow.Throttle(256 << 10) // a pull of over 15 s
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	started := make(chan error, 1)
	go func() {
		_, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "doomed", Image: ref})
		started <- err
	}()
	rec.WaitFor(t, "doomed", events.TypeInstancePulling, 10*time.Second)
	began := time.Now()
	if err := r.Terminate(ctx(t), "doomed", time.Second); err != nil {
		t.Fatalf("terminate during the pull: %v", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("terminate waited %s for the pull", took)
	}
	if err := <-started; err == nil {
		t.Fatal("the called-off start reported success")
	}
	rec.WaitFor(t, "doomed", events.TypeInstanceTerminated, time.Second)
	assertNothingLeft(t, ns)
}

// ownRegistry starts a registry of the test's own, holding a payload image
// with padding bytes no daemon has seen, so that the test may throttle it or
// require credentials without touching other tests' pulls.
func ownRegistry(t *testing.T, repoTag string, padding int) (*testenv.Registry, string) {
	t.Helper()
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	ref, err := reg.PushPayloadWithPadding(repoTag, padding)
	if err != nil {
		t.Fatal(err)
	}
	return reg, ref
}
