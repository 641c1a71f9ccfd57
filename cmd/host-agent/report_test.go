package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/server/reporter"
)

// centralServer stands in for the platform's server: it records what the
// agent sends and answers as told.
type centralServer struct {
	mu         sync.Mutex
	down       bool
	answer     string
	registers  []reporter.RegisterRequest
	heartbeats []reporter.HeartbeatRequest
	auth       []string
}

func (c *centralServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.auth = append(c.auth, r.Header.Get("Authorization"))
	if c.down {
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
		return
	}
	switch {
	case strings.HasSuffix(r.URL.Path, "/api/v1/agents/e2e-host/register"):
		var req reporter.RegisterRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		c.registers = append(c.registers, req)
		w.WriteHeader(http.StatusNoContent)
	case strings.HasSuffix(r.URL.Path, "/api/v1/agents/e2e-host/heartbeat"):
		var req reporter.HeartbeatRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		c.heartbeats = append(c.heartbeats, req)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(c.answer))
	default:
		http.NotFound(w, r)
	}
}

func (c *centralServer) set(f func(*centralServer)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c)
}

// waitFor polls until cond holds on the recorded calls.
func (c *centralServer) waitFor(t *testing.T, what string, cond func(*centralServer) bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		c.mu.Lock()
		ok := cond(c)
		c.mu.Unlock()
		if ok {
			return
		}
	}
	t.Fatalf("central server never saw: %s", what)
}

func lastHeartbeatWith(c *centralServer, from int, pred func(reporter.HeartbeatRequest) bool) bool {
	for _, hb := range c.heartbeats[min(from, len(c.heartbeats)):] {
		if pred(hb) {
			return true
		}
	}
	return false
}

func hasInstance(hb reporter.HeartbeatRequest, id, status string) bool {
	return slices.ContainsFunc(hb.Instances, func(s reporter.InstanceState) bool {
		return s.InstanceID == id && s.Status == status
	})
}

// TestAgentReportsToCentralServer runs the agent against a recording central
// server: it registers, heartbeats the instances started through its API,
// rides out an outage without touching them, reconciles (terminating an
// orphan only when told), and registers again after a restart.
func TestAgentReportsToCentralServer(t *testing.T) {
	w := newWorld(t)
	central := &centralServer{answer: `{}`}
	srv := httptest.NewServer(central)
	t.Cleanup(srv.Close)
	// The server gets its own token, never the one guarding the agent.
	const centralToken = "central-token-0123456789abcdef"
	env := append(w.env, "API_SERVER_URL="+srv.URL, "HEARTBEAT_INTERVAL=1s", "API_SERVER_TOKEN="+centralToken)
	agent := startAgent(t, w.bin, env, w.agentLog)
	evs := agent.eventStream("")

	central.waitFor(t, "a registration", func(c *centralServer) bool { return len(c.registers) > 0 })
	central.mu.Lock()
	host := central.registers[0].Host
	auth := central.auth[0]
	central.mu.Unlock()
	if auth != "Bearer "+centralToken {
		t.Errorf("registration sent Authorization %q", auth)
	}
	if host.AgentID != "e2e-host" || host.Runtime.Name != "containerd" || host.Runtime.Namespace != "rentals" {
		t.Errorf("host report = %+v", host)
	}
	if host.PublicURL != agent.base {
		t.Errorf("public URL = %q, want the listen address %q", host.PublicURL, agent.base)
	}
	if host.CPU.Threads != goruntime.NumCPU() {
		t.Errorf("threads = %d, want %d", host.CPU.Threads, goruntime.NumCPU())
	}
	if want := memTotal(t); host.Memory.TotalBytes != want {
		t.Errorf("memory total = %d, /proc/meminfo says %d", host.Memory.TotalBytes, want)
	}

	for _, id := range []string{"rep-a", "rep-orphan"} {
		if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": id, "image": w.image}); code != http.StatusOK {
			t.Fatalf("start %s: %d %v", id, code, body)
		}
	}
	central.waitFor(t, "a heartbeat with rep-a running", func(c *centralServer) bool {
		return lastHeartbeatWith(c, 0, func(hb reporter.HeartbeatRequest) bool { return hasInstance(hb, "rep-a", "running") })
	})
	// The host's images go with it, for the server to place rentals by.
	central.waitFor(t, "a heartbeat carrying the rentals' image", func(c *centralServer) bool {
		return lastHeartbeatWith(c, 0, func(hb reporter.HeartbeatRequest) bool {
			return len(hb.Images) == 1 && hb.Images[0].Image == w.image &&
				strings.HasPrefix(hb.Images[0].Digest, "sha256:") && hb.Images[0].SizeBytes > 0
		})
	})

	// An outage: the agent keeps its tenants and reports again once back.
	central.set(func(c *centralServer) { c.down = true })
	time.Sleep(4 * time.Second)
	if code, inst := agent.call("GET", "/instances/rep-a", nil); code != http.StatusOK || inst["status"] != "running" {
		t.Fatalf("rep-a during the outage: %d %v", code, inst)
	}
	var registersBefore, heartbeatsBefore int
	central.set(func(c *centralServer) {
		c.down = false
		registersBefore, heartbeatsBefore = len(c.registers), len(c.heartbeats)
	})
	central.waitFor(t, "a registration and heartbeat after the outage", func(c *centralServer) bool {
		return len(c.registers) > registersBefore &&
			lastHeartbeatWith(c, heartbeatsBefore, func(hb reporter.HeartbeatRequest) bool { return hasInstance(hb, "rep-a", "running") })
	})

	// Reconciliation: rep-orphan is not expected and rep-gone does not exist.
	central.set(func(c *centralServer) {
		c.answer = `{"expected_instances":["rep-a","rep-gone"]}`
		heartbeatsBefore = len(c.heartbeats)
	})
	if e := await(t, evs, "rep-orphan", events.TypeInstanceOrphan); e.Type == "" {
		t.Fatal("no orphan event")
	}
	await(t, evs, "rep-gone", events.TypeInstanceMissing)
	central.waitFor(t, "orphans and missing in a heartbeat", func(c *centralServer) bool {
		return lastHeartbeatWith(c, heartbeatsBefore, func(hb reporter.HeartbeatRequest) bool {
			return slices.Contains(hb.Orphans, "rep-orphan") && slices.Contains(hb.Missing, "rep-gone")
		})
	})
	time.Sleep(2 * time.Second)
	if code, _ := agent.call("GET", "/instances/rep-orphan", nil); code != http.StatusOK {
		t.Fatalf("an orphan was removed without the server's word: %d", code)
	}
	// Told to terminate the orphan and an expected instance: only the orphan goes.
	central.set(func(c *centralServer) {
		c.answer = `{"expected_instances":["rep-a","rep-gone"],"terminate":["rep-orphan","rep-a"]}`
	})
	await(t, evs, "rep-orphan", events.TypeInstanceTerminated)
	time.Sleep(1500 * time.Millisecond)
	if code, inst := agent.call("GET", "/instances/rep-a", nil); code != http.StatusOK || inst["status"] != "running" {
		t.Fatalf("an expected instance was touched: %d %v", code, inst)
	}

	// After an agent restart it registers again and reports the same instances.
	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	<-agent.done
	central.set(func(c *centralServer) {
		c.answer = `{}`
		registersBefore, heartbeatsBefore = len(c.registers), len(c.heartbeats)
	})
	startAgent(t, w.bin, env, w.agentLog)
	central.waitFor(t, "a registration and heartbeat after the agent restarted", func(c *centralServer) bool {
		return len(c.registers) > registersBefore && c.registers[len(c.registers)-1].Reason == "start" &&
			lastHeartbeatWith(c, heartbeatsBefore, func(hb reporter.HeartbeatRequest) bool { return hasInstance(hb, "rep-a", "running") })
	})
}

func memTotal(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb * 1024
		}
	}
	t.Fatal("no MemTotal")
	return 0
}
