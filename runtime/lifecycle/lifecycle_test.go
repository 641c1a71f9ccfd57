package lifecycle_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/invariant"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/gpualloc"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// newLifecycle builds what an agent start builds over be: a fresh inventory
// of gpus and its allocator, the lifecycle with GPUs as its reservation
// kind, restored from be.
func newLifecycle(t testing.TB, be runtime.Runtime, gpus *dgxa100.Server) (*lifecycle.Lifecycle, *gpu.Allocator) {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	inv, err := gpu.Open(gpus, logger)
	if err != nil {
		t.Fatal(err)
	}
	alloc := gpu.NewAllocator(inv)
	l := lifecycle.New(be, lifecycle.Options{
		Kinds: []runtime.Admission{
			lifecycle.GPUReservations{Alloc: gpualloc.New(alloc)},
			// A small range, rebuilt from labels at every restart; no port
			// counts as bound on the host.
			lifecycle.PortReservations{Alloc: hostport.NewAllocator(testPortRange, func(string, uint16) bool { return false })},
		},
		Logger:            logger,
		ReconcileInterval: -1,
	})
	if err := l.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	return l, alloc
}

// testPortRange is the host port range of the lifecycles newLifecycle builds.
var testPortRange = hostport.Range{First: 41000, Last: 41015}

// waitIdle waits until no start or terminate of l is in flight.
func waitIdle(t testing.TB, l *lifecycle.Lifecycle) { invariant.WaitIdle(t, l) }

// checkNoSharedGPU fails when a GPU is recorded on two existing containers,
// or when a container's reservation labels differ from what the lifecycle
// holds for it.
func checkNoSharedGPU(be *fakeBackend, l *lifecycle.Lifecycle) error {
	var err error
	be.locked(func(cs map[string]*fakeContainer, _ map[string]int) {
		err = invariant.CheckReservations(fakeInstances(cs), l)
	})
	return err
}

// checkSettled is checkNoSharedGPU plus what holds once nothing is in
// flight: no reservation without its container, no lease left, and no two
// calls for one instance ever overlapped in the back end.
func checkSettled(be *fakeBackend, l *lifecycle.Lifecycle) error {
	var err error
	be.locked(func(cs map[string]*fakeContainer, leases map[string]int) {
		list := fakeInstances(cs)
		if err = invariant.CheckReservations(list, l); err != nil {
			return
		}
		if err = invariant.CheckNoOrphanHoldings(list, l); err != nil {
			return
		}
		if len(leases) > 0 {
			err = fmt.Errorf("leases left: %v", leases)
		} else if len(be.overlaps) > 0 {
			err = fmt.Errorf("back end called concurrently for one instance: %v", be.overlaps)
		}
	})
	return err
}

func fakeInstances(cs map[string]*fakeContainer) []runtime.Instance {
	var list []runtime.Instance
	for _, c := range cs {
		list = append(list, c.inst)
	}
	return list
}

func gpuSpec(id, image string, count int) runtime.InstanceSpec {
	return runtime.InstanceSpec{ID: id, Image: image, GPURequest: runtime.GPURequest{Count: count}}
}

// Defect 1: a start whose pull fails must not free the GPUs of the
// instance that its retry, queued behind it, then creates. Before the
// lifecycle layer, the failed start released the GPUs while the retry waited
// on the back end's lock; the retry created the instance on GPUs the
// allocator showed as free, and the next tenant got one of them.
func TestDefect1FailedStartDoesNotFreeItsRetrysGPUs(t *testing.T) {
	t.Parallel()
	pull := newGate()
	var calls sync.Map
	be := newFakeBackend(func(ctx context.Context, step, id string) error {
		if step != stepPull || id != "x" {
			return nil
		}
		if _, again := calls.LoadOrStore(id, true); again {
			return nil
		}
		return pull.wait(ctx)
	})
	l, alloc := newLifecycle(t, be, dgxa100.New())
	defer l.Close()

	spec := gpuSpec("x", "payload", 8)
	first := make(chan error, 1)
	go func() { _, err := l.Start(context.Background(), spec); first <- err }()
	<-pull.reached
	retry := make(chan error, 1)
	go func() { _, err := l.Start(context.Background(), spec); retry <- err }()
	for !l.StartsInFlight("x") {
		time.Sleep(time.Millisecond)
	}
	pull.release <- fmt.Errorf("registry hiccup: %w", errdefs.ErrUnavailable)
	if err := <-first; err == nil {
		t.Fatal("the first start succeeded through a failing pull")
	}
	if err := <-retry; err != nil {
		t.Fatalf("retry: %v", err)
	}
	if _, err := l.Start(context.Background(), gpuSpec("y", "payload", 1)); !errdefs.IsConflict(err) {
		t.Fatalf("another tenant's start while x holds every GPU: %v, want Conflict", err)
	}
	if free, _ := alloc.Counts(); free != 0 {
		t.Fatalf("%d GPUs free while x holds all 8", free)
	}
	waitIdle(t, l)
	if err := checkSettled(be, l); err != nil {
		t.Fatal(err)
	}
}

// Defect 2: a start of X arriving during X's terminate (SIGTERM grace) must
// not reuse the GPUs the terminate is about to release. Before, it found the
// old container, reused its GPUs without a reservation, and the terminate
// released them under the new container.
func TestDefect2StartDuringTerminateReservesAfresh(t *testing.T) {
	t.Parallel()
	kill := newGate()
	be := newFakeBackend(func(ctx context.Context, step, id string) error {
		if step == stepKill && id == "x" {
			return kill.wait(ctx)
		}
		return nil
	})
	l, alloc := newLifecycle(t, be, dgxa100.New())
	defer l.Close()

	spec := gpuSpec("x", "payload", 8)
	if _, err := l.Start(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	term := make(chan error, 1)
	go func() { term <- l.Terminate(context.Background(), "x", time.Second) }()
	<-kill.reached
	start := make(chan error, 1)
	go func() { _, err := l.Start(context.Background(), spec); start <- err }()
	for !l.StartsInFlight("x") {
		time.Sleep(time.Millisecond)
	}
	kill.release <- nil
	if err := <-term; err != nil {
		t.Fatalf("terminate: %v", err)
	}
	if err := <-start; err != nil {
		t.Fatalf("start after terminate: %v", err)
	}
	if held := alloc.Held("x"); len(held) != 8 {
		t.Fatalf("the new x holds %d GPUs in the allocator, want 8", len(held))
	}
	if _, err := l.Start(context.Background(), gpuSpec("y", "payload", 1)); !errdefs.IsConflict(err) {
		t.Fatalf("another tenant's start while the new x holds every GPU: %v, want Conflict", err)
	}
	waitIdle(t, l)
	if err := checkSettled(be, l); err != nil {
		t.Fatal(err)
	}
}

// Defect 3: a terminate whose caller stops waiting (the scheduler's HTTP
// timeout) still releases the GPUs once the container is gone. Before, the
// shared terminate deleted the container and nobody released.
func TestDefect3TerminateOutlivingItsCallerReleasesGPUs(t *testing.T) {
	t.Parallel()
	kill := newGate()
	be := newFakeBackend(func(ctx context.Context, step, id string) error {
		if step == stepKill {
			return kill.wait(ctx)
		}
		return nil
	})
	l, alloc := newLifecycle(t, be, dgxa100.New())
	defer l.Close()
	if _, err := l.Start(context.Background(), gpuSpec("x", "payload", 3)); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithCancel(context.Background())
	term := make(chan error, 1)
	go func() { term <- l.Terminate(short, "x", 30*time.Second) }()
	<-kill.reached
	cancel()
	if err := <-term; !errors.Is(err, context.Canceled) {
		t.Fatalf("terminate whose caller left: %v, want context.Canceled", err)
	}
	kill.release <- nil
	waitIdle(t, l)
	if _, err := be.Get(context.Background(), "x"); !errdefs.IsNotFound(err) {
		t.Fatalf("container still there: %v", err)
	}
	if free, _ := alloc.Counts(); free != 8 {
		t.Fatalf("%d of 8 GPUs free after the terminate ended", free)
	}
}

// Defect 7: an instance ID containerd would refuse is refused before
// anything is reserved or pulled.
func TestDefect7InstanceIDValidatedBeforeAnything(t *testing.T) {
	t.Parallel()
	var pulled sync.Map
	be := newFakeBackend(func(_ context.Context, step, id string) error {
		pulled.Store(id, step)
		return nil
	})
	l, alloc := newLifecycle(t, be, dgxa100.New())
	defer l.Close()
	for _, id := range []string{"job-1-", "a..b", "-a", "a_-b", "", "a/b", "x.", string(make([]byte, 64))} {
		_, err := l.Start(context.Background(), gpuSpec(id, "payload", 1))
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("start %q: %v, want InvalidArgument", id, err)
		}
		if err := l.Terminate(context.Background(), id, 0); !errdefs.IsInvalidArgument(err) {
			t.Errorf("terminate %q: %v, want InvalidArgument", id, err)
		}
	}
	pulled.Range(func(k, _ any) bool { t.Errorf("back end reached for %q", k); return true })
	if free, _ := alloc.Counts(); free != 8 {
		t.Fatalf("%d GPUs free after refused starts", free)
	}
	for _, id := range []string{"a", "job-1", "a.b_c-d", "A1"} {
		if err := runtime.ValidateInstanceID(id); err != nil {
			t.Errorf("%q refused: %v", id, err)
		}
	}
}

// A failed start whose container survives (its removal failed) keeps its
// reservation with the container; a reconcile after the container is
// removed behind the agent's back releases it.
func TestReconcileReleasesReservationsOfVanishedContainers(t *testing.T) {
	t.Parallel()
	be := newFakeBackend(nil)
	l, alloc := newLifecycle(t, be, dgxa100.New())
	defer l.Close()
	if _, err := l.Start(context.Background(), gpuSpec("gone", "payload", 2)); err != nil {
		t.Fatal(err)
	}
	be.locked(func(cs map[string]*fakeContainer, _ map[string]int) { delete(cs, "gone") })
	released, err := l.Reconcile(context.Background())
	if err != nil || len(released) != 1 || released[0] != "gone" {
		t.Fatalf("reconcile released %v, %v; want [gone]", released, err)
	}
	if free, _ := alloc.Counts(); free != 8 {
		t.Fatalf("%d GPUs free after reconcile", free)
	}
}
