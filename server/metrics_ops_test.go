package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/server/reporter"
)

const testMetricsToken = "metrics-token-0123456789"

// sample returns the value of the sample named exactly by series (name and
// labels as the exposition format writes them), and whether it is there.
func sample(body, series string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, series+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		return v, err == nil
	}
	return 0, false
}

func (ts *testServer) scrape(t *testing.T) string {
	t.Helper()
	rec := ts.do(t, http.MethodGet, "/metrics", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// The metrics token opens GET /metrics and nothing else: every other route
// the server registers answers it 401 with the JSON error body, as it
// answers a wrong token, before its handler runs (the fake runtime panics
// on any call, which would answer 500). New routes are covered because the
// routes are read from the server.
func TestMetricsTokenOnlyOpensMetrics(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) { return nil, nil }},
		func(o *Options) { o.MetricsToken = testMetricsToken })
	routes := ts.Routes()
	if len(routes) < 10 {
		t.Fatalf("only %d routes registered: %v", len(routes), routes)
	}
	sawMetrics := false
	for i, r := range routes {
		if r.Method == http.MethodGet && (r.Path == healthPath || r.Path == readinessPath) {
			continue // open to all, token or not
		}
		if r.Method == http.MethodGet && r.Path == metricsPath {
			sawMetrics = true
			continue
		}
		t.Run(r.Method+" "+r.Path, func(t *testing.T) {
			body := ""
			if r.Method == http.MethodPost {
				body = `{"instance_id":"inst-1","image":"nginx"}`
			}
			req := httptest.NewRequest(r.Method, strings.ReplaceAll(r.Path, ":id", "inst-1"), strings.NewReader(body))
			req.RemoteAddr = "127.0.2." + strconv.Itoa(i) + ":5555"
			req.Header.Set("Authorization", "Bearer "+testMetricsToken)
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			ts.Handler().ServeHTTP(rec, req)
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401: %.200s", rec.Code, rec.Body)
			}
			if errorBody(t, rec); rec.Header().Get("WWW-Authenticate") != "Bearer" {
				t.Errorf("401 without WWW-Authenticate: Bearer")
			}
		})
	}
	if !sawMetrics {
		t.Fatal("GET /metrics is not among the routes")
	}
	for _, tc := range []struct {
		name, token, query string
		want               int
	}{
		{"metrics token", testMetricsToken, "", http.StatusOK},
		{"admin token", testToken, "", http.StatusOK},
		{"no token", "", "", http.StatusUnauthorized},
		{"metrics token with a suffix", testMetricsToken + "x", "", http.StatusUnauthorized},
		{"metrics token in the query too", testMetricsToken, "?x=" + testMetricsToken, http.StatusUnauthorized},
	} {
		rec := ts.do(t, http.MethodGet, "/metrics"+tc.query, "", tc.token)
		if rec.Code != tc.want {
			t.Errorf("GET /metrics with %s: %d, want %d", tc.name, rec.Code, tc.want)
		}
	}
	// Without a metrics token configured, an empty bearer is no key.
	plain := newTestServer(t, &fakeRuntime{})
	if rec := plain.do(t, http.MethodGet, "/metrics", "", "Bearer "); rec.Code != http.StatusUnauthorized {
		t.Errorf("GET /metrics with an empty token and no metrics token configured: %d", rec.Code)
	}
}

func TestMetricsTokenMustDifferFromToken(t *testing.T) {
	t.Parallel()
	_, err := New(Options{Runtime: &fakeRuntime{}, Hub: events.NewHub(0, nil), Token: testToken, MetricsToken: testToken})
	if err == nil {
		t.Fatal("New accepted a metrics token equal to the admin token")
	}
}

// Each operational series is on GET /metrics from the start and moves when
// its thing happens: a start that succeeds, one that fails, a rental's
// exit, a drain and an undrain.
func TestOperationalSeriesMove(t *testing.T) {
	t.Parallel()
	rt := &fakeRuntime{
		list: func(context.Context) ([]runtime.Instance, error) { return nil, nil },
		get: func(context.Context, string) (runtime.Instance, error) {
			return runtime.Instance{}, errdefs.ErrNotFound
		},
		start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
			switch spec.ID {
			case "busy":
				return runtime.Instance{}, fmt.Errorf("instance busy exists with another spec: %w", errdefs.ErrConflict)
			case "nopull":
				return runtime.Instance{}, &runtime.StepError{Step: runtime.StepPull, Err: fmt.Errorf("pull: %w", errdefs.ErrNotFound)}
			}
			return running(spec), nil
		},
	}
	d := &memDrainer{}
	ts := newTestServer(t, withDrainAdmission(t, rt, d), func(o *Options) {
		o.Drain = d
		o.RuntimeName = "docker"
		o.Version, o.Commit = "1.2.3", "abc123"
	})
	body := ts.scrape(t)
	for _, series := range []string{
		`host_agent_build_info{commit="abc123",runtime="docker",version="1.2.3"}`,
		`host_agent_instance_starts_total{result="ok"}`,
		`host_agent_instance_starts_total{result="conflict"}`,
		`host_agent_instance_exits_total{reason="exited"}`,
		`host_agent_instance_exits_total{reason="oom_killed"}`,
		`host_agent_drained`,
	} {
		want := 0.0
		if strings.HasPrefix(series, "host_agent_build_info") {
			want = 1
		}
		if v, ok := sample(body, series); !ok || v != want {
			t.Errorf("before anything happened: %s = %v (present %v), want %v", series, v, ok, want)
		}
	}

	start := func(id string, want int) {
		t.Helper()
		if rec := ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"`+id+`","image":"nginx"}`); rec.Code != want {
			t.Fatalf("start %s: %d %s, want %d", id, rec.Code, rec.Body, want)
		}
	}
	start("a", http.StatusOK)
	start("b", http.StatusOK)
	start("busy", http.StatusConflict)
	start("nopull", http.StatusBadRequest)
	if rec := ts.do(t, http.MethodPost, "/start_instance", `{"image":"nginx"}`); rec.Code != http.StatusBadRequest {
		t.Fatalf("start without an ID: %d", rec.Code)
	}
	if rec := ts.do(t, http.MethodPost, "/drain", `{"reason":"maintenance"}`); rec.Code != http.StatusOK {
		t.Fatalf("drain: %d %s", rec.Code, rec.Body)
	}
	body = ts.scrape(t)
	if v, _ := sample(body, "host_agent_drained"); v != 1 {
		t.Errorf("drained host: host_agent_drained = %v, want 1", v)
	}
	start("c", http.StatusServiceUnavailable)
	body = ts.scrape(t)
	for series, want := range map[string]float64{
		`host_agent_instance_starts_total{result="ok"}`:         2,
		`host_agent_instance_starts_total{result="conflict"}`:   1,
		`host_agent_instance_starts_total{result="pull_error"}`: 1,
		`host_agent_instance_starts_total{result="invalid"}`:    1,
		`host_agent_instance_starts_total{result="draining"}`:   1,
		`host_agent_instance_starts_total{result="error"}`:      0,
	} {
		if v, _ := sample(body, series); v != want {
			t.Errorf("%s = %v, want %v", series, v, want)
		}
	}
	if rec := ts.do(t, http.MethodPost, "/undrain", ""); rec.Code != http.StatusOK {
		t.Fatalf("undrain: %d %s", rec.Code, rec.Body)
	}
	if v, _ := sample(ts.scrape(t), "host_agent_drained"); v != 0 {
		t.Errorf("undrained host: host_agent_drained = %v, want 0", v)
	}

	// Exits arrive as events on the hub, from whichever source.
	code := 137
	ts.hub.Publish(events.Event{Type: events.TypeInstanceExited, InstanceID: "a", Status: "exited", ExitCode: &code, OOMKilled: true})
	ts.hub.Publish(events.Event{Type: events.TypeInstanceRunning, InstanceID: "b", Status: "running"})
	ts.hub.Publish(events.Event{Type: events.TypeInstanceExited, InstanceID: "b", Status: "exited"})
	ts.hub.Publish(events.Event{Type: events.TypeInstanceTerminated, InstanceID: "b", Status: "terminated"})
	waitForSeries(t, ts, map[string]float64{
		`host_agent_instance_exits_total{reason="oom_killed"}`: 1,
		`host_agent_instance_exits_total{reason="exited"}`:     1,
	})
}

// waitForSeries scrapes until every series has its value: exits are
// counted on their own goroutine, after Publish returns.
func waitForSeries(t *testing.T, ts *testServer, want map[string]float64) {
	t.Helper()
	var body string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		body = ts.scrape(t)
		all := true
		for series, w := range want {
			if v, _ := sample(body, series); v != w {
				all = false
			}
		}
		if all {
			return
		}
	}
	t.Fatalf("series never reached %v:\n%s", want, grep(body, "host_agent_instance_exits"))
}

// A subscriber that falls behind is dropped by the hub; the exit counter
// resumes where it stopped and still counts every exit once.
func TestExitCountSurvivesABurst(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) { return nil, nil }},
		func(o *Options) { o.Hub = events.NewHub(100000, nil) })
	const n = 5000
	for i := range n {
		ts.hub.Publish(events.Event{Type: events.TypeInstanceExited, InstanceID: "i" + strconv.Itoa(i), Status: "exited"})
	}
	waitForSeries(t, ts, map[string]float64{`host_agent_instance_exits_total{reason="exited"}`: n})
}

// Heartbeat rounds move the counter of their result, and a success sets
// the timestamp.
func TestHeartbeatMetrics(t *testing.T) {
	t.Parallel()
	hb := NewHeartbeatMetrics()
	ts := newTestServer(t, &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) { return nil, nil }},
		func(o *Options) { o.Collectors = []prometheus.Collector{hb} })
	body := ts.scrape(t)
	for _, r := range reporter.HeartbeatResults {
		if v, ok := sample(body, `host_agent_heartbeats_total{result="`+r+`"}`); !ok || v != 0 {
			t.Errorf("result %s before any round: %v (present %v)", r, v, ok)
		}
	}
	if v, ok := sample(body, "host_agent_last_heartbeat_success_timestamp_seconds"); !ok || v != 0 {
		t.Errorf("last success before any round: %v (present %v)", v, ok)
	}
	at := time.Date(2026, 3, 4, 5, 6, 7, 500e6, time.UTC)
	hb.Observe(reporter.HeartbeatUnreachable, at.Add(-time.Minute))
	hb.Observe(reporter.HeartbeatOK, at)
	hb.Observe(reporter.HeartbeatUnreachable, at.Add(time.Minute))
	body = ts.scrape(t)
	if v, _ := sample(body, `host_agent_heartbeats_total{result="unreachable"}`); v != 2 {
		t.Errorf("unreachable = %v, want 2", v)
	}
	if v, _ := sample(body, `host_agent_heartbeats_total{result="ok"}`); v != 1 {
		t.Errorf("ok = %v, want 1", v)
	}
	if v, _ := sample(body, "host_agent_last_heartbeat_success_timestamp_seconds"); v != float64(at.UnixMilli())/1000 {
		t.Errorf("last success = %v, want %v", v, float64(at.UnixMilli())/1000)
	}
}

// promtool check metrics finds nothing to say about the agent's exposition
// (names, units, help texts, counters' _total).
func TestMetricsPassPromtool(t *testing.T) {
	t.Parallel()
	testenv.Require(t, "promtool")
	hb := NewHeartbeatMetrics()
	hb.Observe(reporter.HeartbeatOK, time.Now())
	ts := newTestServer(t, &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) { return nil, nil }},
		func(o *Options) { o.Collectors = []prometheus.Collector{hb}; o.Drain = &memDrainer{} })
	body := ts.scrape(t)
	file := filepath.Join(t.TempDir(), "metrics.txt")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = in
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// The disk collector reads the free space at each scrape, next to the
// reserve; an unreadable path has no value.
func TestDiskCollector(t *testing.T) {
	t.Parallel()
	var free uint64 = 5 << 30
	var freeErr error
	var mu sync.Mutex
	readFree := func(path string) (uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		if path != "/var/lib/containerd" {
			t.Errorf("free asked about %q", path)
		}
		return free, freeErr
	}
	ts := newTestServer(t, &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) { return nil, nil }},
		func(o *Options) {
			o.Collectors = []prometheus.Collector{DiskCollector("/var/lib/containerd", 10<<30, readFree)}
		})
	body := ts.scrape(t)
	if v, _ := sample(body, "host_agent_disk_free_bytes"); v != 5<<30 {
		t.Errorf("free = %v, want %v", v, 5<<30)
	}
	if v, _ := sample(body, "host_agent_disk_reserve_bytes"); v != 10<<30 {
		t.Errorf("reserve = %v, want %v", v, 10<<30)
	}
	mu.Lock()
	free = 20 << 30
	mu.Unlock()
	if v, _ := sample(ts.scrape(t), "host_agent_disk_free_bytes"); v != 20<<30 {
		t.Errorf("free after it changed = %v, want %v", v, 20<<30)
	}
	mu.Lock()
	freeErr = errors.New("statfs: no such file or directory")
	mu.Unlock()
	if _, ok := sample(ts.scrape(t), "host_agent_disk_free_bytes"); ok {
		t.Errorf("free reported for an unreadable path")
	}
}
