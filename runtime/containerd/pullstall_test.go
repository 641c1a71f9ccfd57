package containerd

import (
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// newStallRuntime is newRuntime with a short stall timeout.
func newStallRuntime(t *testing.T, ns string, rec *conformance.Recorder, stall time.Duration) *agent {
	t.Helper()
	r, err := New(Options{Address: daemon.Address, Namespace: ns, AgentID: "stall-test", LogDir: t.TempDir(), Events: rec,
		PullStallTimeout: stall, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return withLifecycle(t, r, rec)
}

// A registry that stops sending mid-layer fails the start as stalled, and
// nothing of it is left.
func TestPullStalledMidLayer(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	reg, ref := ownRegistry(t, "stuck:latest", 4<<20)
	reg.StallAfter(1 << 20)
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newStallRuntime(t, ns, rec, 2*time.Second)
	_, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "stuck", Image: ref, Command: []string{"sleep", "inf"}})
	var pe *runtime.PullError
	var se *runtime.StepError
	if !errors.As(err, &pe) || pe.Kind != runtime.PullStalled || !errors.As(err, &se) || se.Step != runtime.StepPull {
		t.Fatalf("start from a stalling registry: %v", err)
	}
	if ev := rec.WaitFor(t, "stuck", events.TypeInstanceFailed, time.Second); ev.Step != runtime.StepPull {
		t.Errorf("failed event %+v", ev)
	}
	assertNothingLeft(t, ns)
}

// A slow registry that keeps sending is never cut off, however long the
// pull takes compared with the stall timeout.
func TestSlowSteadyPullSucceeds(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	reg, ref := ownRegistry(t, "slow:latest", 2<<20)
	reg.Throttle(256 << 10) // about 8 s, four times the stall timeout
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newStallRuntime(t, ns, rec, 2*time.Second)
	inst, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "slow", Image: ref, Command: []string{"sleep", "inf"}})
	if err != nil || inst.Status != runtime.StatusRunning {
		t.Fatalf("slow but steady pull: %+v %v", inst, err)
	}
}

// Concurrent starts of one image download each of its blobs once.
func TestConcurrentStartsPullOnce(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	reg, ref := ownRegistry(t, "shared:latest", 2<<20)
	reg.Throttle(1 << 20) // the pulls overlap
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newStallRuntime(t, ns, rec, time.Minute)
	errs := make(chan error, 3)
	for _, id := range []string{"one", "two", "three"} {
		go func() {
			_, err := r.Start(ctx(t), runtime.InstanceSpec{ID: id, Image: ref, Command: []string{"sleep", "inf"}})
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	gets := reg.BlobGets()
	if len(gets) == 0 {
		t.Fatal("no blob downloaded")
	}
	for path, n := range gets {
		if n != 1 {
			t.Errorf("%s downloaded %d times", path, n)
		}
	}
}
