package server

import (
	"io"
	"log/slog"
	"net/http"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"

	"github.com/host-agent/host-agent/gpu"
)

func TestListGPUs(t *testing.T) {
	t.Parallel()
	inv, err := gpu.Open(dgxa100.New(), slog.New(slog.NewTextHandler(io.Discard, nil)))
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

	// A host without GPUs answers an empty list, not null.
	ts = newTestServer(t, &fakeRuntime{})
	rec = ts.do(t, http.MethodGet, "/gpus", "")
	if rec.Code != http.StatusOK || rec.Body.String() != `{"driver_version":"","cuda_driver_version":"","gpus":[]}`+"\n" {
		t.Fatalf("GET /gpus without GPUs: %d %q", rec.Code, rec.Body)
	}
}
