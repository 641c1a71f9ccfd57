package reporter

import (
	"context"
	"testing"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/share"
)

// The host report and every heartbeat say what is allocatable and how much
// rentals hold.
func TestReportsAllocatableAndAllocated(t *testing.T) {
	t.Parallel()
	shares := share.New(share.Options{MemoryMB: 8000, CPUs: 4, GPUs: 2})
	spec := runtime.InstanceSpec{ID: "a", GPUs: []runtime.GPU{{UUID: "GPU-1"}}}
	if _, err := shares.Reserve(&spec); err != nil {
		t.Fatal(err)
	}
	want := ResourcesInfo{AllocatableMemoryMB: 8000, AllocatableCPUs: 4, AllocatedMemoryMB: 4000, AllocatedCPUs: 2}

	h := newHarness(t, nil)
	opts := h.options()
	opts.Sharing = shares
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	rep, _ := r.Collect(context.Background())
	if rep.Resources == nil || *rep.Resources != want {
		t.Errorf("host report resources = %+v, want %+v", rep.Resources, want)
	}
	h.run(opts, h.heartbeatsAtLeast(1))
	hbs := h.server.ofKind("heartbeat")
	if len(hbs) == 0 {
		t.Fatal("no heartbeat")
	}
	if got := hbs[0].heartbeat(t).Resources; got == nil || *got != want {
		t.Errorf("heartbeat resources = %+v, want %+v", got, want)
	}
}
