package server

import (
	"io"
	"log/slog"
	"net/http"
	"testing"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/gpu/gpumock"
)

func TestListGPUs(t *testing.T) {
	t.Parallel()
	srv, err := gpumock.New(gpumock.DGXA100)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := gpu.Open(srv, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	alloc := gpu.NewAllocator(inv)
	held, err := alloc.Reserve("tenant-1", gpu.Request{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, &fakeRuntime{}, func(o *Options) { o.GPUs = inv })
	rec := ts.do(t, http.MethodGet, "/gpus", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var resp GPUListResponse
	decodeInto(t, rec, &resp)
	if len(resp.GPUs) != 8 || resp.DriverVersion == "" || resp.CUDADriverVersion == "" {
		t.Fatalf("GET /gpus = %+v", resp)
	}
	for _, g := range resp.GPUs {
		want := ""
		if g.UUID == held[0].UUID {
			want = "tenant-1"
		}
		if g.HeldBy != want || !g.Healthy {
			t.Errorf("GPU %d: held_by %q healthy %v, want %q", g.Index, g.HeldBy, g.Healthy, want)
		}
	}

	// The matrix of a DGX A100: NVSwitch between every pair, two sockets.
	if len(resp.Topology.Links) != 8 || resp.Topology.Links[0][0] != gpu.LinkSelf || resp.Topology.Links[0][7] != gpu.LinkNVLink ||
		resp.Topology.NUMANodes[0] != 0 || resp.Topology.NUMANodes[7] != 1 {
		t.Errorf("topology = %+v", resp.Topology)
	}
	if len(resp.FreeSets) != 4 || resp.FreeSets[2] != (gpu.BestFree{Size: 4, Available: true, Link: gpu.LinkNVLink}) ||
		resp.FreeSets[3].Available {
		t.Errorf("free sets with one GPU held = %+v", resp.FreeSets)
	}

	// A host without GPUs answers empty lists, not null.
	ts = newTestServer(t, &fakeRuntime{})
	rec = ts.do(t, http.MethodGet, "/gpus", "")
	if rec.Code != http.StatusOK || rec.Body.String() != `{"driver_version":"","cuda_driver_version":"","gpus":[],"topology":{"gpus":[],"links":[],"numa_nodes":[]},"free_sets":[],"mig_devices":[]}`+"\n" {
		t.Fatalf("GET /gpus without GPUs: %d %q", rec.Code, rec.Body)
	}
}
