package server

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// manualClock is a clock that moves only when told.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// countingNetwork counts its checks.
type countingNetwork struct{ checks atomic.Int64 }

func (n *countingNetwork) Check(context.Context) error {
	n.checks.Add(1)
	return nil
}

// A flood of GET /readyz runs one check per readinessTTL: concurrent first
// requests wait for the one check in flight, later ones reuse its answer,
// and a change shows once the interval has passed.
func TestReadyzChecksOncePerInterval(t *testing.T) {
	t.Parallel()
	var pings atomic.Int64
	var pingErr atomic.Pointer[error]
	gate := make(chan struct{})
	rt := &fakeRuntime{ping: func(ctx context.Context) error {
		pings.Add(1)
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		if p := pingErr.Load(); p != nil {
			return *p
		}
		return nil
	}}
	network := &countingNetwork{}
	drainer := &memDrainer{}
	ts := newTestServer(t, rt, func(o *Options) { o.Network, o.Drain = network, drainer })
	clock := &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ts.ready.now = clock.Now

	const n = 20
	codes := make(chan int, n)
	for range n {
		go func() { codes <- ts.do(t, http.MethodGet, "/readyz", "", "").Code }()
	}
	// The first request's check is held at the gate until every other
	// request waits for it.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		ts.ready.mu.Lock()
		waiting := ts.ready.waiting
		ts.ready.mu.Unlock()
		if waiting == n-1 && pings.Load() == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests wait for the check, %d pings, want %d and 1", waiting, pings.Load(), n-1)
		}
	}
	close(gate)
	for range n {
		if code := <-codes; code != http.StatusOK {
			t.Fatalf("readyz: %d", code)
		}
	}
	for range n {
		if rec := ts.do(t, http.MethodGet, "/readyz", "", ""); rec.Code != http.StatusOK {
			t.Fatalf("readyz: %d", rec.Code)
		}
	}
	if p, c := pings.Load(), network.checks.Load(); p != 1 || c != 1 {
		t.Fatalf("%d requests ran %d pings and %d network checks, want 1 each", 2*n, p, c)
	}

	// The runtime goes away: seen once the answer is readinessTTL old.
	down := errors.New("dial unix /run/containerd/containerd.sock: connect: no such file")
	pingErr.Store(&down)
	clock.Advance(readinessTTL - time.Nanosecond)
	if rec := ts.do(t, http.MethodGet, "/readyz", "", ""); rec.Code != http.StatusOK || pings.Load() != 1 {
		t.Fatalf("readyz within the interval: %d after %d pings", rec.Code, pings.Load())
	}
	clock.Advance(time.Nanosecond)
	for range n {
		rec := ts.do(t, http.MethodGet, "/readyz", "", "")
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(errorBody(t, rec).Error, "no such file") {
			t.Fatalf("readyz after the interval with the runtime down: %d %s", rec.Code, rec.Body)
		}
	}
	if p := pings.Load(); p != 2 {
		t.Fatalf("%d pings, want 2", p)
	}

	// It comes back.
	pingErr.Store(nil)
	clock.Advance(readinessTTL)
	if rec := ts.do(t, http.MethodGet, "/readyz", "", ""); rec.Code != http.StatusOK || pings.Load() != 3 {
		t.Fatalf("readyz after the runtime came back: %d after %d pings", rec.Code, pings.Load())
	}

	// A drain through the API shows at once, not an interval later.
	if rec := ts.do(t, http.MethodPost, "/drain", `{"reason":"kernel upgrade"}`); rec.Code != http.StatusOK {
		t.Fatalf("drain: %d %s", rec.Code, rec.Body)
	}
	if rec := ts.do(t, http.MethodGet, "/readyz", "", ""); !strings.Contains(rec.Body.String(), `"reason":"kernel upgrade"`) {
		t.Fatalf("readyz right after a drain: %d %s", rec.Code, rec.Body)
	}
	if rec := ts.do(t, http.MethodPost, "/undrain", ""); rec.Code != http.StatusOK {
		t.Fatalf("undrain: %d %s", rec.Code, rec.Body)
	}
	if rec := ts.do(t, http.MethodGet, "/readyz", "", ""); !strings.Contains(rec.Body.String(), `"draining":false`) {
		t.Fatalf("readyz right after an undrain: %d %s", rec.Code, rec.Body)
	}
}

// A request that stops waiting does not cancel the check others wait for.
func TestReadyzCheckOutlivesItsRequest(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var pings atomic.Int64
	rt := &fakeRuntime{ping: func(ctx context.Context) error {
		pings.Add(1)
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	ts := newTestServer(t, rt)
	ts.ready.now = (&manualClock{now: time.Unix(1e9, 0)}).Now

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan int, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/readyz", nil)
		rec := httptest.NewRecorder()
		ts.Handler().ServeHTTP(rec, req)
		first <- rec.Code
	}()
	second := make(chan int, 1)
	for deadline := time.Now().Add(30 * time.Second); pings.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no check began")
		}
	}
	go func() { second <- ts.do(t, http.MethodGet, "/readyz", "", "").Code }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		ts.ready.mu.Lock()
		waiting := ts.ready.waiting
		ts.ready.mu.Unlock()
		if waiting == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second request does not wait for the check")
		}
	}
	cancel()
	close(gate)
	<-first
	if code := <-second; code != http.StatusOK {
		t.Fatalf("readyz waiting for a check whose request went away: %d", code)
	}
	if p := pings.Load(); p != 1 {
		t.Fatalf("%d pings, want 1", p)
	}
}
