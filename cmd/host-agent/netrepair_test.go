package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/network"
)

// The agent keeps its rules: after an operator's iptables -F of its
// FORWARD chain, and after an ACCEPT put first in FORWARD with its INPUT
// chain flushed, /readyz answers 503 until the agent has put the rules
// back, within 10 seconds; then a rental's probes of the metadata address
// and of the host fail again, a connection it opened to them in the gap
// is cut, and the repairs are counted in GET /metrics and logged.
func TestAgentRepairsNetworkRules(t *testing.T) {
	w := newWorld(t)
	meta := testenv.AddPeer(t, "meta", "192.168.215.1", "192.168.215.2", 30, "169.254.169.254")
	metaAddr := netip.MustParseAddr("169.254.169.254")
	testenv.MustRouteInto(t, metaAddr, meta.HostIf)
	// Long enough that the test's steps fit between two checks.
	const interval = 5 * time.Second
	agent := startAgent(t, w.bin, append(slices.Clone(w.env), "NETWORK_RECHECK_INTERVAL="+interval.String()), w.agentLog)
	mustStart(t, agent, map[string]any{"instance_id": "repair-1", "image": w.image, "command": []string{"sleep", "inf"}})
	t.Cleanup(func() {
		agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "repair-1", "timeout_seconds": 0})
	})
	rentalNS := filepath.Join(network.DefaultNetNSDir, w.net.cfg.NetNSPrefix+"repair-1")
	gw := w.net.subnet.Addr().Next()
	testenv.MustRouteInto(t, gw, w.net.cfg.Bridge)
	metaPort := testenv.ServeEcho(t, meta.NS, "0.0.0.0:0")
	hostPort := testenv.ServeEcho(t, "", gw.String()+":0")
	targets := []struct {
		name string
		addr netip.Addr
		port int
	}{
		{"the metadata address", metaAddr, metaPort},
		{"the host", gw, hostPort},
	}
	blocked := func(when string) {
		t.Helper()
		for _, tg := range targets {
			if c, err := testenv.DialIn(t, rentalNS, tg.addr, tg.port); err == nil {
				ok := testenv.Echoes(c, "probe")
				c.Close()
				if ok {
					t.Errorf("%s: the rental reached %s", when, tg.name)
				}
			}
		}
	}
	iptables := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("iptables %v: %v: %s", args, err, out)
		}
	}
	ready := func() bool {
		code, _ := agent.call("GET", "/readyz", nil)
		return code == http.StatusOK
	}
	waitReady := func(what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ready() {
			if time.Now().After(deadline) {
				_, body := agent.call("GET", "/readyz", nil)
				t.Fatalf("%s: the rules are not back within 10s: %v", what, body)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !ready() {
		t.Fatal("not ready before any change")
	}
	blocked("before any change")

	fwd, in := w.net.cfg.ChainPrefix+"-FORWARD", w.net.cfg.ChainPrefix+"-INPUT"
	// The first repair also tells the test when the agent has just
	// checked: the next check is an interval away.
	// /readyz answers are up to a second old (server.readinessTTL): the
	// test waits for the repair in the log, and for a fresh 503.
	repairs := func() int {
		log, _ := os.ReadFile(w.agentLog)
		return strings.Count(string(log), "repaired the rentals' iptables rules")
	}
	waitRepairs := func(n int, what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); repairs() < n; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no repair within 10s", what)
			}
		}
	}
	iptables("-F", fwd)
	waitRepairs(1, "after iptables -F "+fwd)
	waitReady("after iptables -F " + fwd)
	blocked("after the first repair")

	iptables("-I", "FORWARD", "1", "-i", w.net.cfg.Bridge, "-j", "ACCEPT")
	iptables("-F", in)
	code, body := agent.call("GET", "/readyz", nil)
	for deadline := time.Now().Add(3 * time.Second); code != http.StatusServiceUnavailable && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		code, body = agent.call("GET", "/readyz", nil)
	}
	if code != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(body["error"]), "iptables") {
		t.Fatalf("readyz with the rules changed: %d %v, want 503 naming the rules", code, body)
	}
	var open []net.Conn
	for _, tg := range targets {
		c, err := testenv.DialIn(t, rentalNS, tg.addr, tg.port)
		if err != nil {
			t.Fatalf("in the gap the rental cannot reach %s: %v", tg.name, err)
		}
		t.Cleanup(func() { c.Close() })
		if !testenv.Echoes(c, "in the gap") {
			t.Fatalf("in the gap %s does not answer", tg.name)
		}
		open = append(open, c)
	}
	waitRepairs(2, "after an ACCEPT first in FORWARD and iptables -F "+in)
	waitReady("after an ACCEPT first in FORWARD and iptables -F " + in)
	blocked("after the second repair")
	for _, c := range open {
		if testenv.Echoes(c, "after the repair") {
			t.Errorf("a connection opened in the gap to %s survived the repair", c.RemoteAddr())
		}
	}

	req, _ := http.NewRequest("GET", agent.base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "\n"+network.RuleRepairsMetric+" 2\n") {
		t.Errorf("GET /metrics does not count 2 repairs:\n%s", linesContaining(string(metrics), network.RuleRepairsMetric))
	}
	log, _ := os.ReadFile(w.agentLog)
	if n := strings.Count(string(log), "repaired the rentals' iptables rules"); n != 2 {
		t.Errorf("%d repairs logged, want 2", n)
	}
}

func linesContaining(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
