package reporter

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/gpu/gpumock"
	"github.com/host-agent/host-agent/runtime/events/gpuevents"
)

// TestFreeSetsInRegistrationAndHeartbeat runs the reporter on the mock PCIe
// box with one GPU of each PCIe switch held: the registration and the
// heartbeat tell the server that a 2-GPU rental now spans two switches
// (NODE), a 4-GPU one two sockets (SYS), and that no 8-GPU rental fits.
func TestFreeSetsInRegistrationAndHeartbeat(t *testing.T) {
	t.Parallel()
	srv, err := gpumock.New(gpumock.PCIe8x4090)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := gpu.Open(srv, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	alloc := gpu.NewAllocator(inv)
	for _, id := range []string{"0", "2", "4", "6"} {
		if _, err := alloc.Reserve("held-"+id, gpu.Request{IDs: []string{id}}); err != nil {
			t.Fatal(err)
		}
	}

	h := newHarness(t, nil)
	opts := h.options()
	opts.GPUs = inv
	h.run(opts, h.heartbeatsAtLeast(1))
	calls := h.server.recorded()
	if len(calls) < 2 {
		t.Fatalf("calls = %v", kinds(calls))
	}
	want := []gpu.BestFree{
		{Size: 1, Available: true, Link: gpu.LinkSelf},
		{Size: 2, Available: true, Link: gpu.LinkNODE},
		{Size: 4, Available: true, Link: gpu.LinkSYS},
		{Size: 8},
	}
	reg := calls[0].register(t)
	if !slices.Equal(reg.Host.GPUFreeSets, want) {
		t.Errorf("registration gpu_free_sets = %+v, want %+v", reg.Host.GPUFreeSets, want)
	}
	if topo := reg.Host.GPUTopology; topo == nil || len(topo.Links) != 8 || topo.Links[0][1] != gpu.LinkPIX {
		t.Errorf("registration gpu_topology = %+v", topo)
	}
	if hb := calls[1].heartbeat(t); !slices.Equal(hb.GPUFreeSets, want) {
		t.Errorf("heartbeat gpu_free_sets = %+v, want %+v", hb.GPUFreeSets, want)
	}
}

// TestGPUFaultInHeartbeat: an Xid on a GPU an instance holds, injected on
// the mock machine and seen by the health watcher, is in the next
// heartbeat's entry for that instance, and in no other.
func TestGPUFaultInHeartbeat(t *testing.T) {
	t.Parallel()
	machine, err := gpumock.New(gpumock.DGXA100)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := gpu.Open(machine, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	alloc := gpu.NewAllocator(inv)
	held, err := alloc.Reserve("a", gpu.Request{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inv.WatchHealth(ctx, gpuevents.To(&publisher{})) }()
	machine.InjectXid(held[0].Index, 79)
	for inv.Faults("a") == nil {
		time.Sleep(10 * time.Millisecond) // waiting for the watcher, not timing it
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	h := newHarness(t, nil, testInstances()...)
	opts := h.options()
	opts.GPUs = inv
	h.run(opts, h.heartbeatsAtLeast(1))
	calls := h.server.recorded()
	if len(calls) < 2 {
		t.Fatalf("calls = %v", kinds(calls))
	}
	got := byID(calls[1].heartbeat(t))
	f := got["a"].GPUFaults
	if len(f) != 1 || f[0].Xid != 79 || !f[0].Benched || f[0].GPU != held[0].UUID || f[0].Kind != gpu.FaultXid {
		t.Errorf("instance a's gpu_faults = %+v", f)
	}
	if len(got["b"].GPUFaults) != 0 {
		t.Errorf("instance b's gpu_faults = %+v", got["b"].GPUFaults)
	}
}
