package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// memDrainer keeps the state as the containerd labels would.
type memDrainer struct {
	mu     sync.Mutex
	reason string
	since  time.Time
}

func (m *memDrainer) SetDrain(_ context.Context, reason string, at time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.reason == "" {
		m.since = at
	}
	m.reason = reason
	if m.reason == "" {
		m.reason = "drained"
	}
	return nil
}

func (m *memDrainer) ClearDrain(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reason = ""
	return nil
}

func (m *memDrainer) Drained(context.Context) (string, time.Time, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reason, m.since, m.reason != "", nil
}

func TestDrainHandlers(t *testing.T) {
	t.Parallel()
	started := map[string]string{} // spec hash by ID
	var mu sync.Mutex
	rt := &fakeRuntime{
		start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
			mu.Lock()
			started[spec.ID] = spec.Hash()
			mu.Unlock()
			return runtime.Instance{ID: spec.ID, ContainerID: spec.ID, Status: runtime.StatusRunning}, nil
		},
		get: func(_ context.Context, id string) (runtime.Instance, error) {
			mu.Lock()
			defer mu.Unlock()
			if hash, ok := started[id]; ok {
				return runtime.Instance{ID: id, Status: runtime.StatusRunning, SpecHash: hash}, nil
			}
			return runtime.Instance{}, errdefs.ErrNotFound
		},
		ping: func(context.Context) error { return nil },
	}
	d := &memDrainer{}
	ts := newTestServer(t, withDrainAdmission(t, rt, d), func(o *Options) { o.Drain = d })
	start := func(id string) (int, map[string]any) {
		rec := ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"`+id+`","image":"busybox"}`)
		var body map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		return rec.Code, body
	}
	if code, _ := start("old"); code != http.StatusOK {
		t.Fatalf("start before drain: %d", code)
	}
	if rec := ts.do(t, http.MethodPost, "/drain", `{"reason":"`+strings.Repeat("x", 300)+`"}`); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"field":"reason"`) {
		t.Fatalf("over-long reason: %d %s", rec.Code, rec.Body)
	}
	if rec := ts.do(t, http.MethodPost, "/drain", `{"reason":"kernel upgrade"}`); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"draining":true`) {
		t.Fatalf("drain: %d %s", rec.Code, rec.Body)
	}
	if code, body := start("new"); code != http.StatusServiceUnavailable || body["code"] != "draining" || !strings.Contains(body["error"].(string), "kernel upgrade") {
		t.Fatalf("new start while draining: %d %v", code, body)
	}
	if code, _ := start("old"); code != http.StatusOK {
		t.Fatalf("retried start of an existing instance while draining: %d", code)
	}
	if rec := ts.do(t, http.MethodGet, "/readyz", ""); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"reason":"kernel upgrade"`) {
		t.Fatalf("readyz while draining: %d %s", rec.Code, rec.Body)
	}
	if rec := ts.do(t, http.MethodPost, "/undrain", ""); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"draining":false`) {
		t.Fatalf("undrain: %d %s", rec.Code, rec.Body)
	}
	if code, _ := start("new"); code != http.StatusOK {
		t.Fatalf("start after undrain: %d", code)
	}
}

func TestDrainWithoutDrainer(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	for _, path := range []string{"/drain", "/undrain"} {
		if rec := ts.do(t, http.MethodPost, path, `{}`); rec.Code != http.StatusNotImplemented {
			t.Errorf("POST %s without a drainer: %d %s", path, rec.Code, rec.Body)
		}
	}
}

// withDrainAdmission puts the lifecycle, which refuses new rentals on a
// drained host, over rt; a fake without list answers none.
func withDrainAdmission(t *testing.T, rt *fakeRuntime, d runtime.DrainState) *lifecycle.Lifecycle {
	t.Helper()
	if rt.list == nil {
		rt.list = func(context.Context) ([]runtime.Instance, error) { return nil, nil }
	}
	l := lifecycle.New(rt, lifecycle.Options{Drain: d, ReconcileInterval: -1})
	t.Cleanup(func() { l.Close() })
	return l
}
