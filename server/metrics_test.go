package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
)

func TestMetrics(t *testing.T) {
	t.Parallel()
	inv, err := gpu.Open(dgxa100.New(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	alloc := gpu.NewAllocator(inv)
	if _, err := alloc.Reserve("a", gpu.Request{Count: 3}); err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	rt := &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) {
		if down.Load() {
			return nil, errdefs.ErrUnavailable
		}
		return []runtime.Instance{{ID: "a", Status: runtime.StatusRunning}, {ID: "b", Status: runtime.StatusRunning}, {ID: "c", Status: runtime.StatusExited}}, nil
	}}
	backend := prometheus.NewCounter(prometheus.CounterOpts{Name: "backend_calls_total", Help: "A back end's own metric."})
	backend.Add(7)
	ts := newTestServer(t, rt, func(o *Options) { o.GPUs = inv; o.Collectors = []prometheus.Collector{backend} })
	ts.do(t, http.MethodGet, "/instances", "")
	ts.do(t, http.MethodGet, "/no/such/route", "")

	scrape := func() string {
		rec := ts.do(t, http.MethodGet, "/metrics", "")
		if rec.Code != http.StatusOK {
			t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
		}
		return rec.Body.String()
	}
	body := scrape()
	for _, want := range []string{
		`host_agent_instances{status="running"} 2`,
		`host_agent_instances{status="exited"} 1`,
		`host_agent_runtime_up 1`,
		`host_agent_gpus{state="held"} 3`,
		`host_agent_gpus{state="free"} 5`,
		`host_agent_http_requests_total{code="200",method="GET",route="/instances"} 1`,
		`host_agent_http_requests_total{code="404",method="GET",route="unmatched"} 1`,
		`host_agent_http_request_duration_seconds_count{method="GET",route="/instances"} 1`,
		`host_agent_websocket_streams 0`,
		`backend_calls_total 7`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	down.Store(true)
	if body := scrape(); !strings.Contains(body, "host_agent_runtime_up 0") || strings.Contains(body, "host_agent_instances{") {
		t.Errorf("with the runtime down the metrics say:\n%s", grep(body, "host_agent_"))
	}
	if rec := ts.do(t, http.MethodGet, "/metrics", "", ""); rec.Code != http.StatusUnauthorized {
		t.Errorf("GET /metrics without the token: %d", rec.Code)
	}
}

func grep(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
