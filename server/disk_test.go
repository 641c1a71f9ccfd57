package server

import (
	"context"
	"net/http"
	"strconv"
	"testing"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// labelledBackend is a memBackend whose containers carry the labels the
// Lifecycle reserved, as the real back ends write them.
type labelledBackend struct{ *memBackend }

func (b labelledBackend) Start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	inst, err := b.memBackend.Start(ctx, spec)
	if err != nil {
		return inst, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	inst.AgentLabels = spec.ReservedLabels
	b.containers[spec.ID] = inst
	return inst, nil
}

// Through the real handler and Lifecycle: a disk limit that does not fit
// in what the disk allocates is a 409 naming disk and creates nothing; a
// start naming none gets the default (an eighth of what the disk
// allocates, on a host without GPUs), which GET shows.
func TestDiskLimitAdmissionAndDefault(t *testing.T) {
	t.Parallel()
	const gib = 1 << 30
	be := labelledBackend{newMemBackend()}
	limits := &disk.Limits{Path: "/var/lib/containerd", ReserveBytes: 20 * gib,
		Free: func(string) (uint64, error) { return 100 * gib, nil }}
	lc := lifecycle.New(be, lifecycle.Options{Kinds: []runtime.Admission{limits}, ReconcileInterval: -1})
	t.Cleanup(func() { _ = lc.Close() })
	ts := newTestServer(t, lc)

	rec := ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"big","image":"nginx","resources":{"disk_gb":81}}`)
	if rec.Code != http.StatusConflict || errorBody(t, rec).Field != "disk" {
		t.Fatalf("81 GiB on a disk allocating 80: %d %s, want 409 field disk", rec.Code, rec.Body)
	}
	if rec := ts.do(t, http.MethodGet, "/instances/big", ""); rec.Code != http.StatusNotFound {
		t.Fatalf("refused start left an instance: %d %s", rec.Code, rec.Body)
	}
	rec = ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"fits","image":"nginx","resources":{"disk_gb":70}}`)
	if rec.Code != http.StatusOK {
		t.Fatalf("70 GiB: %d %s", rec.Code, rec.Body)
	}
	rec = ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"plain","image":"nginx"}`)
	if rec.Code != http.StatusOK {
		t.Fatalf("no disk_gb: %d %s", rec.Code, rec.Body)
	}
	var got InstanceResponse
	decodeInto(t, ts.do(t, http.MethodGet, "/instances/plain", ""), &got)
	if got.DiskLimitBytes != 10*gib {
		t.Fatalf("default disk limit %d, want %d (an eighth of 80 GiB)", got.DiskLimitBytes, 10*gib)
	}
	rec = ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"third","image":"nginx"}`)
	if rec.Code != http.StatusConflict || errorBody(t, rec).Field != "disk" {
		t.Fatalf("a default of 10 GiB beside 80 GiB of limits: %d %s, want 409 field disk", rec.Code, rec.Body)
	}
	if held := limits.Held(); held != 80*gib {
		t.Fatalf("held %s bytes, want 80 GiB", strconv.FormatUint(held, 10))
	}
}

// An instance the agent stopped at its disk limit says so in GET.
func TestInstanceShowsExitReason(t *testing.T) {
	t.Parallel()
	code := 137
	ts := newTestServer(t, &fakeRuntime{get: func(_ context.Context, id string) (runtime.Instance, error) {
		return runtime.Instance{ID: id, ContainerID: id, Status: runtime.StatusExited, ExitCode: &code,
			ExitReason: runtime.ExitReasonDiskLimit}, nil
	}})
	rec := ts.do(t, http.MethodGet, "/instances/full", "")
	var got map[string]any
	decodeInto(t, rec, &got)
	if got["reason"] != runtime.ExitReasonDiskLimit {
		t.Fatalf("GET answered %s, want reason disk_limit", rec.Body)
	}
}
