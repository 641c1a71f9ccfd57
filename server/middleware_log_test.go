package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// levelRecorder is a slog handler that keeps the level of each request
// line by its path.
type levelRecorder struct {
	mu     sync.Mutex
	levels []requestLine
}

type requestLine struct {
	path   string
	status int64
	level  slog.Level
}

func (h *levelRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *levelRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *levelRecorder) WithGroup(string) slog.Handler            { return h }
func (h *levelRecorder) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "request" {
		return nil
	}
	line := requestLine{level: r.Level}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "path":
			line.path = a.Value.String()
		case "status":
			line.status = a.Value.Int64()
		}
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	h.levels = append(h.levels, line)
	return nil
}

func (h *levelRecorder) take() []requestLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.levels
	h.levels = nil
	return out
}

// Probes (health checks and scrapes) that succeed are logged at debug, so
// that a supervisor polling them does not drown the log; a probe that fails
// is logged at info like any other request.
func TestProbesLogAtDebugUnlessTheyFail(t *testing.T) {
	t.Parallel()
	rec := &levelRecorder{}
	var pingErr error
	var mu sync.Mutex
	rt := &fakeRuntime{
		list: func(context.Context) ([]runtime.Instance, error) { return nil, nil },
		ping: func(context.Context) error { mu.Lock(); defer mu.Unlock(); return pingErr },
	}
	ts := newTestServer(t, rt, func(o *Options) { o.Logger = slog.New(rec) })
	// Each readiness probe checks afresh: the clock moves past the cached
	// answer's lifetime before each request.
	clock := &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ts.ready.now = clock.Now
	for _, tc := range []struct {
		name   string
		path   string
		token  string
		broken bool
		status int
		level  slog.Level
	}{
		{"healthz", "/healthz", testToken, false, http.StatusOK, slog.LevelDebug},
		{"readyz", "/readyz", testToken, false, http.StatusOK, slog.LevelDebug},
		{"metrics", "/metrics", testToken, false, http.StatusOK, slog.LevelDebug},
		{"readyz with the runtime down", "/readyz", testToken, true, http.StatusServiceUnavailable, slog.LevelInfo},
		{"metrics without the token", "/metrics", "", false, http.StatusUnauthorized, slog.LevelInfo},
		{"metrics, unknown path under it", "/metrics/x", testToken, false, http.StatusNotFound, slog.LevelInfo},
		{"an API call", "/instances", testToken, false, http.StatusOK, slog.LevelInfo},
	} {
		mu.Lock()
		pingErr = nil
		if tc.broken {
			pingErr = errors.Join(errors.New("containerd: connection refused"), errdefs.ErrUnavailable)
		}
		mu.Unlock()
		clock.Advance(readinessTTL)
		if r := ts.do(t, http.MethodGet, tc.path, "", tc.token); r.Code != tc.status {
			t.Fatalf("%s: status %d, want %d: %s", tc.name, r.Code, tc.status, r.Body)
		}
		lines := rec.take()
		if len(lines) != 1 || lines[0].path != tc.path || lines[0].status != int64(tc.status) {
			t.Fatalf("%s: request lines %+v, want one for %s", tc.name, lines, tc.path)
		}
		if lines[0].level != tc.level {
			t.Errorf("%s: logged at %v, want %v", tc.name, lines[0].level, tc.level)
		}
	}
}
