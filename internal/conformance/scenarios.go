package conformance

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/host-agent/host-agent/runtime/events"
)

func spec(h Harness, id string, args ...string) runtime.InstanceSpec {
	return runtime.InstanceSpec{ID: id, Image: h.Image, Command: args}
}

// assertGone checks that the instance is gone from Get and List.
func assertGone(t *testing.T, a *Agent, id string) {
	t.Helper()
	if _, err := a.Get(Ctx(t), id); !errdefs.IsNotFound(err) {
		t.Fatalf("get %s: %v, want NotFound", id, err)
	}
	list, err := a.List(Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, inst := range list {
		if inst.ID == id {
			t.Fatalf("%s still listed: %+v", id, inst)
		}
	}
}

func testIdempotentStart(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "idem")
	s := spec(h, id, "sleep", "inf")
	s.Labels = map[string]string{"owner": "tenant-1"}
	first, err := a.Start(Ctx(t), s)
	if err != nil {
		t.Fatal(err)
	}
	if first.Status != runtime.StatusRunning || first.ContainerID == "" || first.Labels["owner"] != "tenant-1" {
		t.Fatalf("first start answered %+v", first)
	}
	again, err := a.Start(Ctx(t), s)
	if err != nil {
		t.Fatalf("repeated start: %v", err)
	}
	if again.ContainerID != first.ContainerID || again.Pid != first.Pid {
		t.Fatalf("repeated start made another container: %+v then %+v", first, again)
	}
	other := spec(h, id, "sleep", "1000")
	if _, err := a.Start(Ctx(t), other); !errdefs.IsConflict(err) {
		t.Fatalf("start with a different request: %v, want Conflict", err)
	}
	if got, err := a.Get(Ctx(t), id); err != nil || got.ContainerID != first.ContainerID || got.Status != runtime.StatusRunning {
		t.Fatalf("after the conflict: %+v %v", got, err)
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
}

func testFailedStart(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	// An image the registry does not have: the pull fails.
	id := uniqueID(t, "nopull")
	s := runtime.InstanceSpec{ID: id, Image: h.Registry.Host + "/missing:nope"}
	_, err := a.Start(Ctx(t), s)
	var se *runtime.StepError
	if !errors.As(err, &se) || se.Step != runtime.StepPull {
		t.Fatalf("start of a missing image: %v, want a pull-step error", err)
	}
	assertGone(t, a, id)
	a.Events.WaitFor(t, id, events.TypeInstanceFailed, 10*time.Second)

	// An entrypoint the image does not have: the container is made and
	// cannot start; nothing of it may stay.
	id = uniqueID(t, "noexec")
	s = spec(h, id)
	s.Entrypoint = []string{"/no-such-program"}
	_, err = a.Start(Ctx(t), s)
	if !errors.As(err, &se) || (se.Step != runtime.StepStart && se.Step != runtime.StepCreate) {
		t.Fatalf("start of a missing program: %v, want a create- or start-step error", err)
	}
	assertGone(t, a, id)
	// The same ID starts cleanly afterwards.
	if _, err := a.Start(Ctx(t), spec(h, id, "sleep", "inf")); err != nil {
		t.Fatalf("start after a failed start: %v", err)
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
}

func testTerminate(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	// SIGTERM first: the payload's sleep ends on it.
	id := uniqueID(t, "term")
	if _, err := a.Start(Ctx(t), spec(h, id, "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	if err := a.Terminate(Ctx(t), id, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	a.Events.WaitFor(t, id, events.TypeInstanceTerminated, 10*time.Second)
	assertGone(t, a, id)

	// SIGKILL after the grace period for a tenant that ignores SIGTERM.
	id = uniqueID(t, "stubborn")
	if _, err := a.Start(Ctx(t), spec(h, id, "ignore-term", "echo", "ready", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	waitLogs(t, a, id, "ready")
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
	assertGone(t, a, id)

	// An exited instance terminates too; an unknown one is NotFound.
	id = uniqueID(t, "done")
	if _, err := a.Start(Ctx(t), spec(h, id, "exit", "3")); err != nil {
		t.Fatal(err)
	}
	a.Events.WaitFor(t, id, events.TypeInstanceExited, 30*time.Second)
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
	assertGone(t, a, id)
	if err := a.Terminate(Ctx(t), uniqueID(t, "never"), time.Second); !errdefs.IsNotFound(err) {
		t.Fatalf("terminate of an unknown instance: %v, want NotFound", err)
	}
}

func testExitOnce(t *testing.T, h Harness) {
	sc := h.NewScope(t)
	a := open(t, sc, nil)
	id := uniqueID(t, "exit7")
	if _, err := a.Start(Ctx(t), spec(h, id, "exit", "7")); err != nil {
		t.Fatal(err)
	}
	ev := a.Events.WaitFor(t, id, events.TypeInstanceExited, 30*time.Second)
	if ev.ExitCode == nil || *ev.ExitCode != 7 {
		t.Fatalf("exit event %+v, want code 7", ev)
	}
	inst, err := a.Get(Ctx(t), id)
	if err != nil || inst.Status != runtime.StatusExited || inst.ExitCode == nil || *inst.ExitCode != 7 {
		t.Fatalf("get after exit: %+v %v", inst, err)
	}
	// One that exits while no agent runs is reported by the next one.
	late := uniqueID(t, "late")
	if _, err := a.Start(Ctx(t), spec(h, late, "sleep", "2", "exit", "5")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	deadline := time.Now().Add(time.Minute)
	b := open(t, sc, nil)
	b.Events.WaitFor(t, "", events.TypeRuntimeConnected, 30*time.Second)
	for time.Now().Before(deadline) && b.Events.Count(late, events.TypeInstanceExited) == 0 {
		time.Sleep(100 * time.Millisecond)
	}
	if n := b.Events.Count(late, events.TypeInstanceExited); n != 1 {
		t.Fatalf("the exit during the agent's absence was reported %d times; events: %s", n, b.Events.Summary())
	}
	// The exit reported before the restart is not reported again.
	time.Sleep(2 * time.Second)
	if n := a.Events.Count(id, events.TypeInstanceExited) + b.Events.Count(id, events.TypeInstanceExited); n != 1 {
		t.Fatalf("exit of %s reported %d times across a restart; events: %s", id, n, b.Events.Summary())
	}
	for _, x := range []string{id, late} {
		if err := b.Terminate(Ctx(t), x, time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

func testReadBack(t *testing.T, h Harness) {
	sc := h.NewScope(t)
	a := open(t, sc, nil)
	id := uniqueID(t, "kept")
	s := spec(h, id, "sleep", "inf")
	s.Labels = map[string]string{"team": "blue"}
	s.Resources.MemoryMB = 128
	first, err := a.Start(Ctx(t), s)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b := open(t, sc, nil)
	got, err := b.Get(Ctx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if got.ContainerID != first.ContainerID || got.SpecHash != s.Hash() || got.Labels["team"] != "blue" ||
		got.Status != runtime.StatusRunning || got.Image != h.Image || got.AgentLabels[runtime.LabelInstanceID] != id {
		t.Fatalf("read back %+v, want what %+v started", got, first)
	}
	// The same request is still the same instance; another is a conflict.
	if again, err := b.Start(Ctx(t), s); err != nil || again.ContainerID != first.ContainerID {
		t.Fatalf("repeated start after a restart: %+v %v", again, err)
	}
	s.Resources.MemoryMB = 256
	if _, err := b.Start(Ctx(t), s); !errdefs.IsConflict(err) {
		t.Fatalf("different request after a restart: %v, want Conflict", err)
	}
	if err := b.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
}

func testLogs(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "talk")
	if _, err := a.Start(Ctx(t), spec(h, id, "echo", "one", "echo", "two", "echo", "three", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	waitLogs(t, a, id, "three")
	b, cut, err := a.Logs(Ctx(t), id, 2)
	if err != nil || cut || string(b) != "two\nthree\n" {
		t.Fatalf("last 2 lines: %q cut=%v %v", b, cut, err)
	}
	if _, _, err := a.Logs(Ctx(t), uniqueID(t, "nobody"), 10); !errdefs.IsNotFound(err) {
		t.Fatalf("logs of an unknown instance: %v, want NotFound", err)
	}
	// More than the cap: the answer is cut to it, at a line boundary.
	big := uniqueID(t, "spam")
	if _, err := a.Start(Ctx(t), spec(h, big, "spam", "3000000", "echo", "END", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	waitLogs(t, a, big, "END")
	b, cut, err = a.Logs(Ctx(t), big, 1000000)
	if err != nil || !cut || len(b) > runtime.MaxLogBytes || !strings.HasSuffix(string(b), "END\n") {
		t.Fatalf("capped logs: %d bytes, cut=%v, %v", len(b), cut, err)
	}
	for _, x := range []string{id, big} {
		if err := a.Terminate(Ctx(t), x, time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

func testPullProgress(t *testing.T, h Harness) {
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	ref, err := reg.PushPayloadWithPadding("big:1", 3<<20)
	if err != nil {
		t.Fatal(err)
	}
	reg.Throttle(1 << 20)
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "pull")
	if _, err := a.Start(Ctx(t), runtime.InstanceSpec{ID: id, Image: ref, Command: []string{"sleep", "inf"}}); err != nil {
		t.Fatal(err)
	}
	a.Events.WaitFor(t, id, events.TypeInstancePulling, time.Second)
	ev := a.Events.WaitFor(t, id, events.TypeInstancePullProgress, time.Second)
	if ev.Progress == nil || ev.Progress.TotalBytes < 3<<20 || ev.Progress.DoneBytes > ev.Progress.TotalBytes {
		t.Fatalf("progress event %+v", ev.Progress)
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
}

func testRegistryAuth(t *testing.T, h Harness) {
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	ref, err := reg.PushPayload(fmt.Sprintf("private-%d:1", time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	reg.RequireBasicAuth("tenant", "s3cret")
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "priv")
	s := runtime.InstanceSpec{ID: id, Image: ref, Command: []string{"sleep", "inf"}}
	s.RegistryAuth = &runtime.RegistryAuth{Username: "tenant", Password: "wrong"}
	_, err = a.Start(Ctx(t), s)
	if !errdefs.IsUnauthorized(err) {
		t.Fatalf("start with wrong credentials: %v, want Unauthenticated", err)
	}
	assertGone(t, a, id)
	s.RegistryAuth = &runtime.RegistryAuth{Username: "tenant", Password: "s3cret"}
	if _, err := a.Start(Ctx(t), s); err != nil {
		t.Fatalf("start with the right credentials: %v", err)
	}
	// Another request without credentials does not get the image the
	// first one pulled.
	other := uniqueID(t, "freeload")
	if _, err := a.Start(Ctx(t), runtime.InstanceSpec{ID: other, Image: ref, Command: []string{"sleep", "inf"}}); !errdefs.IsUnauthorized(err) {
		t.Fatalf("a request without credentials for a private image another request pulled: %v, want Unauthenticated", err)
	}
	assertGone(t, a, other)
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
}

// cgroupOf reads a controller file of the cgroup the process pid is in,
// as the host sees it: v1 (controller/file) or its unified equivalent.
func cgroupOf(t *testing.T, pid uint32, file string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	ctrl, name := filepath.Dir(file), filepath.Base(file)
	v2 := map[string]string{"pids.max": "pids.max", "memory.limit_in_bytes": "memory.max", "cpu.cfs_quota_us": "cpu.max"}[name]
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if slices.Contains(strings.Split(parts[1], ","), ctrl) {
			if v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", ctrl, parts[2], name)); err == nil {
				return strings.TrimSpace(string(v))
			}
		}
		if parts[0] == "0" && parts[1] == "" {
			if v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", parts[2], v2)); err == nil {
				return strings.Fields(string(v))[0]
			}
		}
	}
	t.Fatalf("no cgroup file %s for pid %d in:\n%s", file, pid, b)
	return ""
}

func testLimits(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "limited")
	s := spec(h, id, "statfs", "/dev/shm", "echo", "END", "sleep", "inf")
	s.Resources = runtime.Resources{CPUs: 0.5, MemoryMB: 64, Pids: 50, ShmMB: 32}
	inst, err := a.Start(Ctx(t), s)
	if err != nil {
		t.Fatal(err)
	}
	if logs := waitLogs(t, a, id, "END"); !strings.HasPrefix(logs, fmt.Sprint(32<<20)+"\n") {
		t.Errorf("/dev/shm inside: %q, want 32 MiB", logs)
	}
	// The kernel enforces them: the cgroup of the instance's process.
	for file, want := range map[string]string{
		"pids/pids.max":                "50",
		"memory/memory.limit_in_bytes": "67108864",
		"cpu/cpu.cfs_quota_us":         "50000",
	} {
		if got := cgroupOf(t, inst.Pid, file); got != want {
			t.Errorf("cgroup %s = %q, want %q", file, got, want)
		}
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a bytes.Buffer safe to read while a follow writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// follow follows id's log from position from (tail lines when below zero),
// capped at maxBytes (0: the default), until it ends.
func follow(t *testing.T, a *Agent, id string, from int64, tail int, maxBytes int64) (string, int64, bool) {
	t.Helper()
	var out syncBuffer
	flushes := 0
	next, truncated, err := a.FollowLogs(Ctx(t), id, from, tail, maxBytes, &out, func() { flushes++ })
	if err != nil {
		t.Fatalf("follow %s from %d: %v", id, from, err)
	}
	if out.String() != "" && flushes == 0 {
		t.Errorf("follow %s: output never flushed", id)
	}
	return out.String(), next, truncated
}

// testFollowLogs: following streams what the instance writes after the
// position the agent gave, ends when the instance exits, stops at a cap
// saying where to resume, and resumes there without a gap or a repeat.
// Positions are opaque: a byte offset on one back end, a time on another.
func testFollowLogs(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "chatty")
	if _, err := a.Start(Ctx(t), spec(h, id, "echo", "early", "sleep", "3", "echo", "late-1", "sleep", "1", "echo", "late-2", "exit", "0")); err != nil {
		t.Fatal(err)
	}
	waitLogs(t, a, id, "early")
	from, err := a.LogOffset(Ctx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	got, _, truncated := follow(t, a, id, from, 0, 0)
	if got != "late-1\nlate-2\n" || truncated {
		t.Errorf("followed from the position after early: %q (truncated %v), want late-1 and late-2", got, truncated)
	}
	if inst, err := a.Get(Ctx(t), id); err != nil || inst.Status != runtime.StatusExited {
		t.Errorf("the stream ended before the exit: %+v %v", inst, err)
	}
	// From the start, capped at two lines, then resumed.
	got, next, truncated := follow(t, a, id, 0, 0, int64(len("early\nlate-1\n")))
	if got != "early\nlate-1\n" || !truncated {
		t.Errorf("capped: %q (truncated %v)", got, truncated)
	}
	if rest, _, truncated := follow(t, a, id, next, 0, 0); rest != "late-2\n" || truncated {
		t.Errorf("resumed: %q (truncated %v), want late-2 alone", rest, truncated)
	}
	if last, _, _ := follow(t, a, id, -1, 1, 0); last != "late-2\n" {
		t.Errorf("tail 1: %q", last)
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
}

// testEnforcedLimits: the limits the Lifecycle fills in (the host's share)
// are the ones applied, a pids limit is there though nobody named one, and
// ulimits reach the process, soft and hard alike.
func testEnforcedLimits(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "share")
	s := spec(h, id, "statfs", "/dev/shm", "cat", "/proc/self/limits", "echo", "END", "sleep", "inf")
	s.Limits = runtime.Resources{CPUs: 0.25, MemoryMB: 96, ShmMB: 48}
	// Lowered, not raised: raising needs CAP_SYS_RESOURCE, which a
	// sandbox may withhold.
	s.Ulimits = map[string]int64{"nofile": 4096, "core": 0}
	inst, err := a.Start(Ctx(t), s)
	if err != nil {
		t.Fatal(err)
	}
	logs := waitLogs(t, a, id, "END")
	if !strings.HasPrefix(logs, fmt.Sprint(48<<20)+"\n") {
		t.Errorf("/dev/shm inside: %q, want 48 MiB", strings.SplitN(logs, "\n", 2)[0])
	}
	for file, want := range map[string]string{
		"pids/pids.max":                fmt.Sprint(runtime.DefaultPids),
		"memory/memory.limit_in_bytes": fmt.Sprint(96 << 20),
		"cpu/cpu.cfs_quota_us":         "25000",
	} {
		if got := cgroupOf(t, inst.Pid, file); got != want {
			t.Errorf("cgroup %s = %q, want %q", file, got, want)
		}
	}
	for _, want := range [][]string{{"Max open files", "4096", "4096"}, {"Max core file size", "0", "0"}} {
		found := false
		for _, line := range strings.Split(logs, "\n") {
			if rest, ok := strings.CutPrefix(line, want[0]); ok {
				f := strings.Fields(rest)
				found = len(f) >= 2 && f[0] == want[1] && f[1] == want[2]
			}
		}
		if !found {
			t.Errorf("no %q %s/%s in /proc/self/limits:\n%s", want[0], want[1], want[2], logs)
		}
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
}

// testOOM: a payload allocating past its memory limit is killed by the
// kernel, and its exit event and state say so; one exiting by itself is
// not reported as killed.
func testOOM(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	hog, fine := uniqueID(t, "hog"), uniqueID(t, "fine")
	s := spec(h, hog, "alloc", "512", "sleep", "inf")
	s.Resources.MemoryMB = 32
	if _, err := a.Start(Ctx(t), s); err != nil {
		t.Fatal(err)
	}
	ev := a.Events.WaitFor(t, hog, events.TypeInstanceExited, time.Minute)
	if !ev.OOMKilled || ev.ExitCode == nil || *ev.ExitCode != 137 {
		t.Errorf("exit event %+v (exit code %v), want oom_killed and 137", ev, ev.ExitCode)
	}
	inst, err := a.Get(Ctx(t), hog)
	if err != nil {
		t.Fatal(err)
	}
	if !inst.OOMKilled || inst.Status != runtime.StatusExited {
		t.Errorf("instance %+v, want exited and oom_killed", inst)
	}
	if _, err := a.Start(Ctx(t), spec(h, fine, "alloc", "8", "exit", "0")); err != nil {
		t.Fatal(err)
	}
	if ev := a.Events.WaitFor(t, fine, events.TypeInstanceExited, time.Minute); ev.OOMKilled {
		t.Errorf("a clean exit reported as OOM: %+v", ev)
	}
	for _, id := range []string{hog, fine} {
		if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// testSSHKeys: the tenant's keys are at /root/.ssh/authorized_keys and the
// tenant cannot change them, though the rest of /root/.ssh is its own; an
// image running as another user has them in that user's ~/.ssh as well.
func testSSHKeys(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "sshd")
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm4Zbn8QF1mJx2mA4P6Gx9mI1Yy2W8fJj9pSx0c3Vb1 tenant@laptop"
	s := spec(h, id, "cat", backend.AuthorizedKeysPath, "write", backend.AuthorizedKeysPath,
		"write", "/root/.ssh/other", "cat", "/root/.ssh/other", "echo", "END", "sleep", "inf")
	s.SSHAuthorizedKeys = []string{key}
	if _, err := a.Start(Ctx(t), s); err != nil {
		t.Fatal(err)
	}
	logs := waitLogs(t, a, id, "END")
	if !strings.HasPrefix(logs, key+"\n") {
		t.Errorf("authorized_keys inside:\n%s", logs)
	}
	if !strings.Contains(logs, "write "+backend.AuthorizedKeysPath+": open "+backend.AuthorizedKeysPath+": read-only file system") {
		t.Errorf("the tenant could write its authorized_keys:\n%s", logs)
	}
	if !strings.Contains(logs, "write /root/.ssh/other: ok\nwritten by the tenant\n") {
		t.Errorf("the rest of /root/.ssh is not the tenant's:\n%s", logs)
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}

	// An image whose USER is another user with a home: the keys are in
	// that home too, where sshd looks for that user's.
	img, err := h.Registry.PushUserImage(strings.ToLower(uniqueID(t, "userimg"))+":1",
		"app", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n", "root:x:0:\napp:x:1000:\n")
	if err != nil {
		t.Fatal(err)
	}
	uid := uniqueID(t, "sshd-app")
	s = runtime.InstanceSpec{ID: uid, Image: img, Command: []string{"cat", "/home/app/.ssh/authorized_keys",
		"write", "/home/app/.ssh/authorized_keys", "echo", "END", "sleep", "inf"}}
	s.SSHAuthorizedKeys = []string{key}
	if _, err := a.Start(Ctx(t), s); err != nil {
		t.Fatal(err)
	}
	logs = waitLogs(t, a, uid, "END")
	if !strings.HasPrefix(logs, key+"\n") || strings.Contains(logs, "write /home/app/.ssh/authorized_keys: ok") {
		t.Errorf("the image user's authorized_keys inside (want the key, not writable):\n%s", logs)
	}
	if err := a.Terminate(Ctx(t), uid, time.Second); err != nil {
		t.Fatal(err)
	}
}

// defaultCapBnd is the bounding set of a rental's capabilities: the
// runtimes' default 14 (the same on Docker and containerd) without
// CAP_NET_RAW (bit 13).
const defaultCapBnd = "00000000a80405fb"

// ipv6Probe are payload arguments printing the IPv6 addresses the rental
// has, between two markers (checkConfinedStatus reads them).
var ipv6Probe = []string{"echo", "IPV6-BEGIN", "cat", "/proc/net/if_inet6", "echo", "IPV6-END"}

// checkConfinedStatus checks a rental's /proc/self/status (printed by the
// payload's cat) and its IPv6 addresses (ipv6Probe): no new privileges,
// seccomp, the rental's capabilities in the bounding, effective and
// permitted sets and none to inherit, no IPv6 address, not even on
// loopback.
func checkConfinedStatus(t *testing.T, logs string) {
	t.Helper()
	for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2", "CapBnd:\t" + defaultCapBnd, "CapEff:\t" + defaultCapBnd,
		"CapPrm:\t" + defaultCapBnd, "CapInh:\t0000000000000000", "CapAmb:\t0000000000000000"} {
		if !strings.Contains(logs, want+"\n") {
			t.Errorf("status inside lacks %q:\n%s", want, logs)
		}
	}
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		return // the host has no IPv6, nor has the rental
	}
	_, rest, ok := strings.Cut(logs, "IPV6-BEGIN\n")
	addrs, _, ok2 := strings.Cut(rest, "IPV6-END\n")
	if !ok || !ok2 || addrs != "" {
		t.Errorf("IPv6 inside the rental (want none):\n%s", logs)
	}
}

func testConfinement(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "jail")
	s := spec(h, id, append([]string{"cat", "/proc/self/status", "ls", "/dev"}, ipv6Probe...)...)
	s.Command = append(s.Command, "echo", "END", "sleep", "inf")
	s.Env = map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"}
	if _, err := a.Start(Ctx(t), s); err != nil {
		t.Fatal(err)
	}
	logs := waitLogs(t, a, id, "END")
	checkConfinedStatus(t, logs)
	if strings.Contains(logs, "nvidia") {
		t.Errorf("a CPU rental sees a GPU node:\n%s", logs)
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
}

func testGPUs(t *testing.T, h Harness) {
	gh := NewGPUHost(t)
	sc := h.NewScope(t)
	a := open(t, sc, gh)
	id := uniqueID(t, "gpu2")
	s := spec(h, id, "ls", "/dev", "echo", "END", "sleep", "inf")
	s.GPURequest = runtime.GPURequest{Count: 2}
	s.Env = map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"}
	if r, ok := sc.(GPURefuser); ok && r.GPUsRefused() != "" {
		_, err := a.Start(Ctx(t), s)
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "CDI") {
			t.Fatalf("a GPU rental where the daemon %s: %v, want a failed precondition naming CDI", r.GPUsRefused(), err)
		}
		assertGone(t, a, id)
		if h := a.Holdings(); len(h) != 0 {
			t.Fatalf("reservations left after a refused GPU start: %v", h)
		}
		return
	}
	inst, err := a.Start(Ctx(t), s)
	if err != nil {
		t.Fatal(err)
	}
	if len(inst.GPUs) != 2 {
		t.Fatalf("holds %v, want 2 GPUs", inst.GPUs)
	}
	var wantUUIDs []string
	for _, g := range inst.GPUs {
		wantUUIDs = append(wantUUIDs, g.UUID)
	}
	slices.Sort(wantUUIDs)
	logs := waitLogs(t, a, id, "END")
	minors := gh.minors()
	var want, seen []string
	for _, u := range wantUUIDs {
		want = append(want, fmt.Sprintf("nvidia%d", minors[u]))
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.HasPrefix(line, "nvidia") {
			seen = append(seen, line)
		}
	}
	slices.Sort(want)
	slices.Sort(seen)
	if !slices.Equal(seen, want) {
		t.Fatalf("container sees %v, want exactly %v", seen, want)
	}
	// Another tenant asking for one of these GPUs by UUID is refused with
	// a conflict, and holds nothing.
	thief := uniqueID(t, "thief")
	ts := spec(h, thief, "sleep", "inf")
	ts.GPURequest = runtime.GPURequest{IDs: []string{inst.GPUs[0].UUID}}
	if _, err := a.Start(Ctx(t), ts); !errdefs.IsConflict(err) {
		t.Fatalf("start with another tenant's GPU: %v, want Conflict", err)
	}
	assertGone(t, a, thief)

	// After an agent restart (a fresh allocator over the same GPUs) the
	// reservations are rebuilt from the container's labels, and the GPUs
	// are still refused to another tenant.
	a.Close()
	a = open(t, sc, gh.Restarted())
	uuids, _ := runtime.FormatGPULabels(inst.GPUs)
	if got := a.Holdings()[id][runtime.LabelGPUs]; got != uuids {
		t.Fatalf("reservations after a restart: %v, want %s for %s", a.Holdings(), uuids, id)
	}
	if _, err := a.Start(Ctx(t), ts); !errdefs.IsConflict(err) {
		t.Fatalf("start with another tenant's GPU after a restart: %v, want Conflict", err)
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
	if h := a.Holdings(); len(h) != 0 {
		t.Fatalf("reservations left after terminate: %v", h)
	}
}
