package containerd

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// Defect 4: a re-sent start of an instance that has run and exited, whose
// task containerd has since removed (as it does for tasks that ended while
// it was down), answers the instance as it is, with its exit, and never runs
// the workload again.
func TestDefect4ResentStartOfExitedInstanceDoesNotRunAgain(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	spec := payloadSpec("once", "echo", "ran", "exit", "3")
	if _, err := r.Start(ctx(t), spec); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, "once", events.TypeInstanceExited, 30*time.Second)
	cl, cctx := rawClient(t, daemon.Address, ns)
	if _, err := cl.TaskService().Delete(cctx, &tasksapi.DeleteTaskRequest{ContainerID: "once"}); err != nil {
		t.Fatal(err)
	}

	inst, err := r.Start(ctx(t), spec)
	if err != nil {
		t.Fatalf("re-sent start: %v", err)
	}
	if inst.Status != runtime.StatusExited || inst.ExitCode == nil || *inst.ExitCode != 3 || inst.Pid != 0 {
		t.Fatalf("re-sent start answered %+v, want exited with code 3 and no pid", inst)
	}
	if _, err := cl.TaskService().Get(cctx, &tasksapi.GetRequest{ContainerID: "once"}); !errdefs.IsNotFound(convertErr(err)) {
		t.Fatalf("a task exists again after the re-sent start: %v", err)
	}
	if n := rec.Count("once", events.TypeInstanceRunning); n != 1 {
		t.Fatalf("%d running events, want 1", n)
	}
	b, err := os.ReadFile(r.logPath("once"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "ran"); n != 1 {
		t.Fatalf("the workload ran %d times: %q", n, b)
	}
	if err := r.Terminate(ctx(t), "once", time.Second); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, ns)
}

// Defect 6: a start called off during its pull (by a terminate, or the
// agent's shutdown) leaves no lease behind, so the layers it fetched are
// collectable at once rather than after a day.
func TestDefect6CancelledPullLeavesNoLease(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	slow, ref := ownRegistry(t, "leased:latest", 4<<20)
	slow.Throttle(256 << 10)
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)

	// Called off by a terminate.
	started := make(chan error, 1)
	go func() {
		_, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "leased", Image: ref})
		started <- err
	}()
	rec.WaitFor(t, "leased", events.TypeInstancePulling, 10*time.Second)
	if err := r.Terminate(ctx(t), "leased", time.Second); err != nil {
		t.Fatalf("terminate during the pull: %v", err)
	}
	if err := <-started; err == nil {
		t.Fatal("the called-off start reported success")
	}
	assertNothingLeft(t, ns)

	// Called off by the agent's shutdown, the caller having gone.
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := r.Start(short, runtime.InstanceSpec{ID: "leased-2", Image: ref}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start with an impatient caller: %v", err)
	}
	rec.WaitFor(t, "leased-2", events.TypeInstancePulling, 10*time.Second)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, ns)
}

// Defect 5: an image pulled with one tenant's credentials is not reused for
// a request without them or with wrong ones: the registry is asked first,
// and nothing is started. The right credentials reuse it; public images are
// reused without asking (every other test).
func TestDefect5PrivateImageNotReusedWithoutCredentials(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	private, ref := ownRegistry(t, "private/reuse:1", 1024)
	private.RequireBasicAuth("tenant-a", "a-secret-pass")
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	good := &runtime.RegistryAuth{Username: "tenant-a", Password: "a-secret-pass"}
	if _, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "owner", Image: ref, Command: []string{"sleep", "inf"}, RegistryAuth: good}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   string
		auth *runtime.RegistryAuth
	}{
		{"no-creds", nil},
		{"wrong-creds", &runtime.RegistryAuth{Username: "tenant-b", Password: "guess"}},
	} {
		_, err := r.Start(ctx(t), runtime.InstanceSpec{ID: tc.id, Image: ref, Command: []string{"sleep", "inf"}, RegistryAuth: tc.auth})
		var se *runtime.StepError
		if !errors.As(err, &se) || se.Step != runtime.StepPull || !(errdefs.IsUnauthorized(err) || errdefs.IsPermissionDenied(err)) {
			t.Fatalf("%s: %v, want a pull failure about the credentials", tc.id, err)
		}
		if _, err := r.Get(ctx(t), tc.id); !errdefs.IsNotFound(err) {
			t.Fatalf("%s: an instance was created: %v", tc.id, err)
		}
	}
	if n := rec.Count("no-creds", events.TypeInstancePulling) + rec.Count("wrong-creds", events.TypeInstancePulling); n != 0 {
		t.Errorf("the refused starts pulled (%d pull events); the image was there", n)
	}
	if _, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "owner-2", Image: ref, Command: []string{"sleep", "inf"}, RegistryAuth: good}); err != nil {
		t.Fatalf("reuse with the right credentials: %v", err)
	}
}
