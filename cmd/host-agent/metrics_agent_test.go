package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/events"
)

// metricsScrapeEnv names a file TestAgentMetrics writes the running
// agent's last scrape to, for CI to keep or check.
const metricsScrapeEnv = "HOST_AGENT_METRICS_SCRAPE"

// get sends a GET with the given bearer token and returns status and body.
func (a *agentProc) get(path, token string) (int, string) {
	a.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, a.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// seriesValue is the value of the sample named exactly by series, or -1.
func seriesValue(scrape, series string) float64 {
	for _, line := range strings.Split(scrape, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
				return v
			}
		}
	}
	return -1
}

// TestAgentMetrics runs the built agent against a real containerd, a
// registry and a stand-in central server, scrapes it with the metrics
// token as Prometheus would, and sees each operational series move: a
// start, a failed pull, an exit, a drain and an undrain, heartbeats that
// succeed and then fail. The exposition passes promtool check metrics, and
// carries every metric the dashboard and the alerts name.
func TestAgentMetrics(t *testing.T) {
	testenv.Require(t, "promtool")
	w := newWorld(t)
	central := &centralServer{answer: `{}`}
	srv := httptest.NewServer(central)
	t.Cleanup(srv.Close)
	const metricsToken = "metrics-token-0123456789abcdef"
	tokenFile := filepath.Join(t.TempDir(), "metrics-token")
	if err := os.WriteFile(tokenFile, []byte(metricsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(w.env, "API_SERVER_URL="+srv.URL, "HEARTBEAT_INTERVAL=1s",
		"API_SERVER_TOKEN=central-token-0123456789abcdef", "METRICS_TOKEN_FILE="+tokenFile)
	agent := startAgent(t, w.bin, env, w.agentLog)
	evs := agent.eventStream("")

	var last string
	scrape := func() string {
		t.Helper()
		code, body := agent.get("/metrics", metricsToken)
		if code != http.StatusOK {
			t.Fatalf("GET /metrics with the metrics token: %d %s", code, body)
		}
		last = body
		return body
	}
	// waitUntil scrapes until every series satisfies its condition.
	waitUntil := func(what string, want map[string]func(float64) bool) string {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			body, all := scrape(), true
			for series, ok := range want {
				all = all && ok(seriesValue(body, series))
			}
			if all {
				return body
			}
		}
		t.Fatalf("%s: the series never got there:\n%s", what, grepLines(last, "host_agent_"))
		return ""
	}
	atLeast := func(n float64) func(float64) bool { return func(v float64) bool { return v >= n } }
	is := func(n float64) func(float64) bool { return func(v float64) bool { return v == n } }

	if code, _ := agent.get("/instances", metricsToken); code != http.StatusUnauthorized {
		t.Errorf("GET /instances with the metrics token: %d, want 401", code)
	}
	if code, _ := agent.get("/metrics", e2eToken); code != http.StatusOK {
		t.Errorf("GET /metrics with the agent's token: %d, want 200", code)
	}

	body := waitUntil("first heartbeat", map[string]func(float64) bool{
		`host_agent_build_info{commit="unknown",runtime="containerd",version="dev"}`: is(1),
		`host_agent_heartbeats_total{result="ok"}`:                                   atLeast(1),
		`host_agent_last_heartbeat_success_timestamp_seconds`:                        atLeast(float64(time.Now().Add(-time.Minute).Unix())),
		`host_agent_drained`:                               is(0),
		`host_agent_instance_starts_total{result="ok"}`:    is(0),
		`host_agent_instance_exits_total{reason="exited"}`: is(0),
	})
	okBefore := seriesValue(body, `host_agent_heartbeats_total{result="ok"}`)

	if code, resp := agent.call("POST", "/start_instance", map[string]any{"instance_id": "met-exit", "image": w.image, "command": []string{"exit", "3"}}); code != http.StatusOK {
		t.Fatalf("start met-exit: %d %v", code, resp)
	}
	await(t, evs, "met-exit", events.TypeInstanceExited)
	missing := strings.Replace(w.image, ":e2e", ":no-such-tag", 1)
	if code, resp := agent.call("POST", "/start_instance", map[string]any{"instance_id": "met-nopull", "image": missing}); code != http.StatusBadRequest {
		t.Fatalf("start of an image the registry lacks: %d %v", code, resp)
	}
	waitUntil("a start, an exit and a failed pull", map[string]func(float64) bool{
		`host_agent_instance_starts_total{result="ok"}`:         is(1),
		`host_agent_instance_starts_total{result="pull_error"}`: is(1),
		`host_agent_instance_exits_total{reason="exited"}`:      is(1),
		`host_agent_instance_exits_total{reason="oom_killed"}`:  is(0),
		`host_agent_heartbeats_total{result="ok"}`:              atLeast(okBefore + 1),
	})

	if code, resp := agent.call("POST", "/drain", map[string]any{"reason": "metrics test"}); code != http.StatusOK {
		t.Fatalf("drain: %d %v", code, resp)
	}
	waitUntil("drained", map[string]func(float64) bool{`host_agent_drained`: is(1)})
	if code, resp := agent.call("POST", "/undrain", nil); code != http.StatusOK {
		t.Fatalf("undrain: %d %v", code, resp)
	}
	waitUntil("undrained", map[string]func(float64) bool{`host_agent_drained`: is(0)})

	// The central server goes down: failures are counted, the last
	// success stays where it was.
	central.set(func(c *centralServer) { c.down = true })
	body = waitUntil("an outage", map[string]func(float64) bool{`host_agent_heartbeats_total{result="unreachable"}`: atLeast(1)})
	lastOK := seriesValue(body, `host_agent_last_heartbeat_success_timestamp_seconds`)
	body = waitUntil("more of the outage", map[string]func(float64) bool{`host_agent_heartbeats_total{result="unreachable"}`: atLeast(2)})
	if v := seriesValue(body, `host_agent_last_heartbeat_success_timestamp_seconds`); v != lastOK {
		t.Errorf("last success moved during the outage: %v, then %v", lastOK, v)
	}

	if path := os.Getenv(metricsScrapeEnv); path != "" {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("promtool check metrics on the agent's /metrics: %v\n%s", err, out)
	}
	// This host has no GPUs: the DCGM series are absent here, and checked
	// on a host with NVML's mock GPUs by TestDashboardAndAlertsNameServedMetrics.
	noGPUs := seriesValue(body, `host_agent_gpus{state="free"}`) == 0 && seriesValue(body, `host_agent_gpus{state="held"}`) == 0
	checkNamedMetricsServed(t, body, func(name string) bool { return noGPUs && strings.HasPrefix(name, "DCGM_") })
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
