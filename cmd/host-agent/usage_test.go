package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/server/reporter"
)

// TestAgentUsage runs the built agent: a rental's usage is answered by
// GET /instances/{id}, sent in every heartbeat, carried by its
// instance.exited event and served as metrics labelled by instance_id; it
// never goes back across a crash and restart of the agent, and it is
// forgotten (record and series) when the rental is terminated. A
// RENTAL_EGRESS_MBPS default is recorded on a rental that names none.
func TestAgentUsage(t *testing.T) {
	w := newWorld(t)
	central := &centralServer{answer: `{}`}
	srv := httptest.NewServer(central)
	t.Cleanup(srv.Close)
	env := append(w.env, "API_SERVER_URL="+srv.URL, "HEARTBEAT_INTERVAL=1s", "RENTAL_EGRESS_MBPS=200")
	agent := startAgent(t, w.bin, env, w.agentLog)
	evs := agent.eventStream("")
	var stateDir string
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "STATE_DIR="); ok {
			stateDir = v
		}
	}

	for id, cmd := range map[string][]string{"u-spin": {"spin", "sleep", "inf"}, "u-exit": {"spin", "sleep", "2", "exit", "3"}} {
		if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": id, "image": w.image, "command": cmd}); code != http.StatusOK {
			t.Fatalf("start %s: %d %v", id, code, body)
		}
	}
	usageOf := func(what string, body map[string]any) map[string]float64 {
		t.Helper()
		u, ok := body["usage"].(map[string]any)
		if !ok {
			t.Fatalf("%s: no usage in %v", what, body)
		}
		out := map[string]float64{}
		for _, k := range []string{"cpu_seconds", "memory_max_bytes", "net_rx_bytes", "net_tx_bytes", "disk_used_bytes", "gpu_seconds"} {
			v, ok := u[k].(float64)
			if !ok {
				t.Fatalf("%s: usage without %s: %v", what, k, u)
			}
			out[k] = v
		}
		return out
	}
	code, body := agent.call("GET", "/instances/u-spin", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /instances/u-spin: %d %v", code, body)
	}
	first := usageOf("GET", body)
	if first["memory_max_bytes"] <= 0 {
		t.Errorf("no memory metered: %v", first)
	}

	e := await(t, evs, "u-exit", events.TypeInstanceExited)
	if e.Usage == nil || e.Usage.CPUSeconds <= 0 {
		t.Errorf("instance.exited of a rental that kept a CPU busy for 2 s: usage %+v", e.Usage)
	}

	from := 0
	central.set(func(c *centralServer) { from = len(c.heartbeats) })
	central.waitFor(t, "a heartbeat with u-spin's usage", func(c *centralServer) bool {
		return lastHeartbeatWith(c, from, func(hb reporter.HeartbeatRequest) bool {
			for _, s := range hb.Instances {
				if s.InstanceID == "u-spin" && s.Usage != nil && s.Usage.CPUSeconds > 0 {
					return true
				}
			}
			return false
		})
	})

	series := `host_agent_instance_cpu_seconds_total{instance_id="u-spin"}`
	_, scrape := agent.get("/metrics", e2eToken)
	if v := seriesValue(scrape, series); v <= 0 {
		t.Errorf("%s = %g:\n%s", series, v, grepLines(scrape, "host_agent_instance_"))
	}

	time.Sleep(time.Second)
	_, body = agent.call("GET", "/instances/u-spin", nil)
	before := usageOf("GET before the crash", body)
	if before["cpu_seconds"] <= first["cpu_seconds"] {
		t.Errorf("a busy loop's cpu_seconds did not grow: %g, then %g", first["cpu_seconds"], before["cpu_seconds"])
	}

	// The agent crashes and comes back: nothing goes back.
	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	<-agent.done
	agent = startAgent(t, w.bin, env, w.agentLog)
	evs = agent.eventStream("")
	_, body = agent.call("GET", "/instances/u-spin", nil)
	after := usageOf("GET after the restart", body)
	for k, v := range before {
		if after[k] < v {
			t.Errorf("%s went back across the agent's restart: %g, then %g", k, v, after[k])
		}
	}
	// The host's default limit, recorded on a rental that named none.
	cl, err := containerd.New(w.ctd.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c, err := cl.LoadContainer(namespaces.WithNamespace(context.Background(), "rentals"), "u-spin")
	if err != nil {
		t.Fatal(err)
	}
	if labels, err := c.Labels(namespaces.WithNamespace(context.Background(), "rentals")); err != nil || labels[runtime.LabelBandwidth] != "egress=200" {
		t.Errorf("label %s = %q (%v), want RENTAL_EGRESS_MBPS's egress=200", runtime.LabelBandwidth, labels[runtime.LabelBandwidth], err)
	}

	if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "u-spin"}); code != http.StatusOK {
		t.Fatalf("terminate: %d %v", code, body)
	}
	await(t, evs, "u-spin", events.TypeInstanceTerminated)
	if _, err := os.Stat(filepath.Join(stateDir, "usage", "u-spin.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("usage record of a terminated rental: %v", err)
	}
	_, scrape = agent.get("/metrics", e2eToken)
	if strings.Contains(scrape, `instance_id="u-spin"`) {
		t.Errorf("series of a terminated rental:\n%s", grepLines(scrape, "host_agent_instance_"))
	}
	if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "u-exit"}); code != http.StatusOK {
		t.Fatalf("terminate: %d %v", code, body)
	}
}
