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
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/gpualloc"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// memRuntime is a back end that keeps instances in memory, GPUs included, as
// containerd keeps them in labels: it outlives the "agent" in these tests.
type memRuntime struct {
	runtime.Runtime
	mu    sync.Mutex
	insts map[string]runtime.Instance
	fail  bool
	// gate, when set, holds every Start until it is closed.
	gate chan struct{}
}

func (m *memRuntime) Start(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	if m.gate != nil {
		<-m.gate
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepPull, Err: errdefs.ErrNotFound}
	}
	if inst, ok := m.insts[spec.ID]; ok {
		if inst.SpecHash != spec.Hash() {
			return runtime.Instance{}, errdefs.ErrConflict
		}
		return inst, nil
	}
	inst := runtime.Instance{ID: spec.ID, Status: runtime.StatusRunning, GPUs: spec.GPUs, SpecHash: spec.Hash(), AgentLabels: spec.ReservedLabels}
	m.insts[spec.ID] = inst
	return inst, nil
}

func (m *memRuntime) Get(_ context.Context, id string) (runtime.Instance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if inst, ok := m.insts[id]; ok {
		return inst, nil
	}
	return runtime.Instance{}, errdefs.ErrNotFound
}

func (m *memRuntime) List(context.Context) ([]runtime.Instance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []runtime.Instance
	for _, i := range m.insts {
		out = append(out, i)
	}
	return out, nil
}

func (m *memRuntime) Terminate(_ context.Context, id string, _ time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.insts[id]; !ok {
		return errdefs.ErrNotFound
	}
	delete(m.insts, id)
	return nil
}

// newAgent is what an agent start builds: a fresh inventory and allocator
// over the same back end and the same GPUs.
func newAgent(t *testing.T, inner runtime.Runtime, gpus *dgxa100.Server) (*lifecycle.Lifecycle, *gpu.Allocator) {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	inv, err := gpu.Open(gpus, logger)
	if err != nil {
		t.Fatal(err)
	}
	if inv.Len() != 8 {
		t.Fatalf("fake server has %d GPUs, want 8", inv.Len())
	}
	alloc := gpu.NewAllocator(inv)
	g := lifecycle.New(inner, lifecycle.Options{
		Kinds:  []runtime.Admission{lifecycle.GPUReservations{Alloc: gpualloc.New(alloc)}},
		Logger: logger,
	})
	if err := g.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	return g, alloc
}

func TestConcurrentStartsNeverDoubleBook(t *testing.T) {
	t.Parallel()
	inner := &memRuntime{insts: map[string]runtime.Instance{}}
	gpus := dgxa100.New()
	g, _ := newAgent(t, inner, gpus)

	const starts = 50
	var wg sync.WaitGroup
	results := make([]runtime.Instance, starts)
	errs := make([]error, starts)
	for i := range starts {
		wg.Go(func() {
			results[i], errs[i] = g.Start(context.Background(), runtime.InstanceSpec{
				ID: fmt.Sprintf("inst-%02d", i), Image: "payload", GPURequest: runtime.GPURequest{Count: 1},
			})
		})
	}
	wg.Wait()

	held := map[string]string{}
	ok := 0
	for i, err := range errs {
		if err != nil {
			var se *runtime.StepError
			if !errors.As(err, &se) || se.Step != runtime.StepAllocate || !errdefs.IsConflict(err) {
				t.Errorf("start %d: %v, want an allocate Conflict", i, err)
			}
			continue
		}
		ok++
		if len(results[i].GPUs) != 1 {
			t.Fatalf("start %d got GPUs %v", i, results[i].GPUs)
		}
		u := results[i].GPUs[0].UUID
		if other, dup := held[u]; dup {
			t.Errorf("GPU %s held by %s and %s", u, other, results[i].ID)
		}
		held[u] = results[i].ID
	}
	if ok != 8 {
		t.Fatalf("%d starts succeeded, want exactly 8", ok)
	}

	// After an agent restart the same 8 are held, and nothing more is free.
	g2, alloc2 := newAgent(t, inner, gpus)
	for u, id := range held {
		got := alloc2.Held(id)
		if len(got) != 1 || got[0].UUID != u {
			t.Errorf("after restart %s holds %v, want %s", id, got, u)
		}
	}
	if free, _ := alloc2.Counts(); free != 0 {
		t.Fatalf("%d GPUs free after restart, want 0", free)
	}
	_, err := g2.Start(context.Background(), runtime.InstanceSpec{ID: "late", GPURequest: runtime.GPURequest{Count: 1}})
	if !errdefs.IsConflict(err) {
		t.Fatalf("start after restart with all GPUs held: %v, want Conflict", err)
	}

	// Terminating releases; exiting alone would not.
	var victim string
	for _, id := range held {
		victim = id
		break
	}
	if err := g2.Terminate(context.Background(), victim, time.Second); err != nil {
		t.Fatal(err)
	}
	if free, _ := alloc2.Counts(); free != 1 {
		t.Fatalf("%d GPUs free after terminate, want 1", free)
	}
	inst, err := g2.Start(context.Background(), runtime.InstanceSpec{ID: "late", GPURequest: runtime.GPURequest{Count: 1}})
	if err != nil || len(inst.GPUs) != 1 {
		t.Fatalf("start after a release: %+v %v", inst, err)
	}
}

func TestFailedStartReleasesGPUs(t *testing.T) {
	t.Parallel()
	inner := &memRuntime{insts: map[string]runtime.Instance{}, fail: true}
	g, alloc := newAgent(t, inner, dgxa100.New())
	_, err := g.Start(context.Background(), runtime.InstanceSpec{ID: "x", GPURequest: runtime.GPURequest{Count: 3}})
	if err == nil {
		t.Fatal("start succeeded on a failing back end")
	}
	if free, _ := alloc.Counts(); free != 8 {
		t.Fatalf("%d GPUs free after a failed start, want 8", free)
	}
}

func TestGPULabelsRoundTrip(t *testing.T) {
	t.Parallel()
	in := []runtime.GPU{{Index: 3, UUID: "GPU-a"}, {Index: 5, UUID: "GPU-b"}}
	u, ix := runtime.FormatGPULabels(in)
	if u != "GPU-a,GPU-b" || ix != "3,5" {
		t.Fatalf("labels = %q %q", u, ix)
	}
	out := runtime.ParseGPULabels(u, ix)
	if fmt.Sprint(out) != fmt.Sprint(in) {
		t.Fatalf("round trip = %v", out)
	}
	if runtime.ParseGPULabels("", "") != nil {
		t.Fatal("no label gave GPUs")
	}
}

// A terminate racing a start that has reserved GPUs but not yet created the
// container calls the start off and waits for it: the container the start
// makes anyway is deleted, and its GPUs are free once the terminate ends,
// never before.
func TestTerminateDuringStartKeepsReservation(t *testing.T) {
	t.Parallel()
	inner := &memRuntime{insts: map[string]runtime.Instance{}, gate: make(chan struct{})}
	g, alloc := newAgent(t, inner, dgxa100.New())
	done := make(chan error, 1)
	go func() {
		_, err := g.Start(context.Background(), runtime.InstanceSpec{ID: "racer", GPURequest: runtime.GPURequest{Count: 2}})
		done <- err
	}()
	for len(alloc.Held("racer")) == 0 {
		time.Sleep(time.Millisecond)
	}
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := g.Terminate(short, "racer", time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("terminate while the start holds the instance: %v, want the caller's deadline", err)
	}
	if free, _ := alloc.Counts(); free != 6 {
		t.Fatalf("%d GPUs free while the start is in flight, want 6", free)
	}
	close(inner.gate)
	<-done
	if err := g.Terminate(context.Background(), "racer", time.Second); err != nil && !errdefs.IsNotFound(err) {
		t.Fatal(err)
	}
	if got := alloc.Held("racer"); len(got) != 0 {
		t.Fatalf("racer holds %v after its terminate", got)
	}
	if _, err := inner.Get(context.Background(), "racer"); !errdefs.IsNotFound(err) {
		t.Fatalf("racer's container outlived its terminate: %v", err)
	}
}

// A start that loses to a different request for the same instance ID, both
// having reserved before either created its container, leaves the winner's
// GPUs reserved.
func TestConflictingStartKeepsWinnersGPUs(t *testing.T) {
	t.Parallel()
	inner := &memRuntime{insts: map[string]runtime.Instance{}, gate: make(chan struct{})}
	g, alloc := newAgent(t, inner, dgxa100.New())
	first := runtime.InstanceSpec{ID: "same", Image: "a", GPURequest: runtime.GPURequest{Count: 2}}
	other := first
	other.Image = "b"
	errs := make(chan error, 2)
	for _, spec := range []runtime.InstanceSpec{first, other} {
		go func() {
			_, err := g.Start(context.Background(), spec)
			errs <- err
		}()
	}
	time.Sleep(50 * time.Millisecond) // both reserve, then wait at the gate
	close(inner.gate)
	var conflicts, ok int
	for range 2 {
		switch err := <-errs; {
		case err == nil:
			ok++
		case errdefs.IsConflict(err):
			conflicts++
		default:
			t.Fatal(err)
		}
	}
	if ok != 1 || conflicts != 1 {
		t.Fatalf("%d starts ok and %d conflicts, want 1 and 1", ok, conflicts)
	}
	if got := alloc.Held("same"); len(got) != 2 {
		t.Fatalf("the running instance holds %v after a conflicting start", got)
	}
}
