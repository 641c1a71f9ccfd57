package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/gpu/gpumock"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/events/gpuevents"
)

// TestGPUFaultReachesHolder injects Xids on the mock DGX A100 through NVML's
// event source: one that leaves the GPU in service and one that benches it,
// on a GPU a rental holds, and one on a free GPU. The holder's /ws stream
// gets an instance.gpu_fault for each of its own, and GET /instances/{id}
// lists both.
func TestGPUFaultReachesHolder(t *testing.T) {
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
	held, err := alloc.Reserve("tenant-1", gpu.Request{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	rt := &fakeRuntime{get: func(_ context.Context, id string) (runtime.Instance, error) {
		return runtime.Instance{ID: id, ContainerID: id, Status: runtime.StatusRunning,
			GPUs: []runtime.GPU{{Index: held[0].Index, UUID: held[0].UUID}, {Index: held[1].Index, UUID: held[1].UUID}}}, nil
	}}
	ts := newTestServer(t, rt, func(o *Options) { o.GPUs = inv })
	conn := mustDialWS(t, wsServer(t, ts), "")
	waitSubscribed(t, ts.hub, conn)

	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan error, 1)
	go func() { watched <- inv.WatchHealth(ctx, gpuevents.To(ts.hub)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-watched; err != nil {
			t.Errorf("WatchHealth: %v", err)
		}
	})

	free := 0
	for free == held[0].Index || free == held[1].Index {
		free++
	}
	machine.InjectXid(held[1].Index, 31)
	machine.InjectXid(free, 79)
	machine.InjectXid(held[0].Index, 79)

	var faults []events.Event
	for len(faults) < 2 {
		e := readEvent(t, conn)
		switch e.Type {
		case events.TypeInstanceGPUFault:
			faults = append(faults, e)
		case events.TypeGPUHealth:
		default:
			t.Fatalf("unexpected event %+v", e)
		}
	}
	want := []gpu.Fault{
		{GPU: held[1].UUID, Index: held[1].Index, Kind: gpu.FaultXid, Xid: 31, Benched: false},
		{GPU: held[0].UUID, Index: held[0].Index, Kind: gpu.FaultXid, Xid: 79, Benched: true},
	}
	for i, e := range faults {
		f := e.Fault
		if e.InstanceID != "tenant-1" || e.GPU != want[i].GPU || f == nil || f.GPU != want[i].GPU ||
			f.Index != want[i].Index || f.Kind != want[i].Kind || f.Xid != want[i].Xid || f.Benched != want[i].Benched ||
			f.Meaning == "" || f.Time.IsZero() {
			t.Errorf("fault event %d = %+v (fault %+v), want %+v", i, e, f, want[i])
		}
	}
	if want[1].GPU == "" || faults[1].Fault.Meaning != "GPU has fallen off the bus" {
		t.Errorf("Xid 79's meaning = %q", faults[1].Fault.Meaning)
	}

	rec := ts.do(t, http.MethodGet, "/instances/tenant-1", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET: %d %s", rec.Code, rec.Body)
	}
	var got InstanceResponse
	decodeInto(t, rec, &got)
	if len(got.GPUFaults) != 2 || got.GPUFaults[0].Xid != 31 || got.GPUFaults[0].Benched ||
		got.GPUFaults[1].Xid != 79 || !got.GPUFaults[1].Benched || got.GPUFaults[1].GPU != held[0].UUID {
		t.Errorf("GET /instances/tenant-1 gpu_faults = %+v", got.GPUFaults)
	}

	// Released GPUs take their faults with them: the ID may be rented again.
	alloc.Release("tenant-1")
	if f := inv.Faults("tenant-1"); f != nil {
		t.Errorf("faults after release: %+v", f)
	}
}

// TestMockFaultsOnlyOnMockHost: without a mock GPU host the route answers
// 404, saying why.
func TestMockFaultsOnlyOnMockHost(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	rec := ts.do(t, http.MethodPost, "/mock/gpus/0/faults", `{"xid":79}`)
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "GPU_MOCK") {
		t.Fatalf("POST /mock/gpus/0/faults on a real host: %d %s", rec.Code, rec.Body)
	}
}
