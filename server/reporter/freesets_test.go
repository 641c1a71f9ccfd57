package reporter

import (
	"io"
	"log/slog"
	"slices"
	"testing"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/gpu/gpumock"
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
