package network

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/host-agent/host-agent/internal/testenv"
)

func TestNormalizeRule(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ written, printed string }{
		{"-A X -i br -d 10.0.0.0/8 -j REJECT --reject-with icmp-admin-prohibited", "-A X -d 10.0.0.0/8 -i br -j REJECT --reject-with icmp-admin-prohibited"},
		{"-A X -i br ! -s 10.1.0.0/24 -j DROP", "-A X ! -s 10.1.0.0/24 -i br -j DROP"},
		{"-A X -i br -d 10.2.3.4/32 -p udp --dport 53 -j ACCEPT", "-A X -d 10.2.3.4/32 -i br -p udp -m udp --dport 53 -j ACCEPT"},
	} {
		if a, b := normalizeRule(tc.written), normalizeRule(tc.printed); a != b {
			t.Errorf("%q -> %q, %q -> %q", tc.written, a, tc.printed, b)
		}
	}
	for _, tc := range [][2]string{
		{"-A X -i br -j ACCEPT", "-A X -i br -j DROP"},
		{"-A X -i br ! -s 10.1.0.0/24 -j DROP", "-A X -i br -s 10.1.0.0/24 -j DROP"},
		{"-A X -i br -d 10.2.3.4/32 -p udp --dport 53 -j ACCEPT", "-A X -d 10.2.3.4/32 -i br -p tcp -m tcp --dport 53 -j ACCEPT"},
	} {
		if normalizeRule(tc[0]) == normalizeRule(tc[1]) {
			t.Errorf("%q and %q compare equal", tc[0], tc[1])
		}
	}
}

// A jump is inserted first and its old copies deleted after, by their
// positions once the insertion has moved them, in one transaction.
func TestRestoreInputInsertsBeforeDeleting(t *testing.T) {
	t.Parallel()
	d := &diff{
		chains:  []Chain{{Table: "filter", Name: "HA-FORWARD", Rules: []string{"-A HA-FORWARD -i br -j DROP"}}},
		jumps:   []Jump{{Table: "filter", From: "FORWARD", To: "HA-FORWARD"}},
		deletes: map[[2]string][]int{{"filter", "FORWARD"}: {2, 5}},
	}
	want := "*filter\n:HA-FORWARD - [0:0]\n-A HA-FORWARD -i br -j DROP\n-I FORWARD 1 -j HA-FORWARD\n-D FORWARD 6\n-D FORWARD 3\nCOMMIT\n"
	if got := string(d.restoreInput("filter")); got != want {
		t.Errorf("restore input:\n%s\nwant:\n%s", got, want)
	}
	if got := string(d.restoreInput("nat")); got != "*nat\nCOMMIT\n" {
		t.Errorf("nat restore input: %q", got)
	}
}

func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// After an operator's iptables -F of each of the agent's chains, and after
// an ACCEPT put first in FORWARD or INPUT, the rules differ (Check fails,
// as /readyz does) until Rules.Run puts them back, within 10 seconds; then
// a rental's probes of the metadata address and of the host fail again,
// and a connection the rental opened to them during the gap is cut. Each
// repair is counted.
func TestRulesRepairedAfterFlushAndReorder(t *testing.T) {
	tn := newTestNet(t, "10.215.74.0/24", nil)
	ctx := context.Background()
	meta := tn.addPeer("metadata", "169.254.214.1", "169.254.214.2", 30, "169.254.169.254")
	metaAddr := netip.MustParseAddr("169.254.169.254")
	testenv.MustRouteInto(t, metaAddr, meta.hostIf)
	metaPort := testenv.ServeEcho(t, meta.ns, "0.0.0.0:0")
	hostPort := testenv.ServeEcho(t, "", "0.0.0.0:0")

	a, err := tn.net.Setup(ctx, "repair-a", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tn.net.Teardown(context.Background(), "repair-a", nil) })
	testenv.MustRouteInto(t, a.Gateway, tn.net.cfg.Bridge)
	targets := []struct {
		name string
		addr netip.Addr
		port int
	}{
		{"the metadata address", metaAddr, metaPort},
		{"the host", a.Gateway, hostPort},
	}
	// dial opens a connection from the rental.
	dial := func(addr netip.Addr, port int) (net.Conn, error) { return testenv.DialIn(t, a.NetNS, addr, port) }
	blocked := func(when string) {
		t.Helper()
		for _, tg := range targets {
			if c, err := dial(tg.addr, tg.port); err == nil {
				ok := testenv.Echoes(c, "probe")
				c.Close()
				if ok {
					t.Errorf("%s: the rental reached %s", when, tg.name)
				}
			}
		}
	}
	blocked("before any change")

	rules := tn.net.Rules()
	br := tn.net.cfg.Bridge
	repairs := 0.0
	for _, tc := range []struct {
		name string
		args []string
		gap  bool // the change opens the filter: the rental gets through
	}{
		{"flush FORWARD chain", []string{"-F", tn.net.forwardChain()}, true},
		{"flush INPUT chain", []string{"-F", tn.net.inputChain()}, true},
		{"flush POSTROUTING chain", []string{"-t", "nat", "-F", tn.net.postroutingChain()}, false},
		{"ACCEPT first in FORWARD", []string{"-I", "FORWARD", "1", "-i", br, "-j", "ACCEPT"}, true},
		{"ACCEPT first in INPUT", []string{"-I", "INPUT", "1", "-i", br, "-j", "ACCEPT"}, true},
		{"jump deleted", []string{"-D", "FORWARD", "-j", tn.net.forwardChain()}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out, err := exec.Command("iptables", append([]string{"-w"}, tc.args...)...).CombinedOutput(); err != nil {
				t.Fatalf("iptables %v: %v: %s", tc.args, err, out)
			}
			if err := tn.net.Check(ctx); err == nil {
				t.Fatal("Check passes with the rules changed")
			}
			// Connections opened in the gap, which works both ways.
			var open []net.Conn
			if tc.gap {
				for _, tg := range targets {
					c, err := dial(tg.addr, tg.port)
					if err != nil {
						continue // this change opens the other target only
					}
					t.Cleanup(func() { c.Close() })
					if testenv.Echoes(c, "in the gap") {
						open = append(open, c)
					}
				}
				if len(open) == 0 {
					t.Fatal("the change opened no gap: the test cannot see a cut")
				}
			}
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { defer close(done); rules.Run(runCtx, DefaultRecheckInterval) }()
			deadline := time.Now().Add(10 * time.Second)
			for tn.net.Check(ctx) != nil {
				if time.Now().After(deadline) {
					stop()
					<-done
					t.Fatalf("rules not repaired within 10s: %v", tn.net.Check(ctx))
				}
				time.Sleep(100 * time.Millisecond)
			}
			stop()
			<-done
			repairs++
			if got := counterValue(t, rules.Collector()); got != repairs {
				t.Errorf("%s = %v, want %v", RuleRepairsMetric, got, repairs)
			}
			blocked("after the repair")
			for _, c := range open {
				if testenv.Echoes(c, "after the repair") {
					t.Errorf("a connection opened in the gap to %s survived the repair", c.RemoteAddr())
				}
			}
		})
	}
}

// Two agents on the host (their own network names, bridges and chains)
// each keep their jump first in the same built-in chains: each tolerates
// the other's above its own, so neither repairs forever. A chain named
// like an agent's that is not bound to another bridge (it could accept the
// rentals' traffic) is not tolerated.
func TestPeerAgentsJumpsTolerated(t *testing.T) {
	a := newTestNet(t, "10.215.75.0/24", nil)
	b := anotherTestNet(t, "10.215.76.0/24", nil)
	ctx := context.Background()
	// b's Init put its jumps above a's.
	for _, tn := range []*testNet{a, b} {
		if err := tn.net.Check(ctx); err != nil {
			t.Fatalf("%s: %v", tn.net.cfg.NetworkName, err)
		}
		if repaired, err := tn.net.Rules().Reconcile(ctx); repaired || err != nil {
			t.Fatalf("%s repaired (%v) with the other agent's jumps above its own: %v", tn.net.cfg.NetworkName, repaired, err)
		}
	}
	impostor := "HA" + strings.ToUpper(a.tag) + "X-FORWARD"
	for _, args := range [][]string{{"-N", impostor}, {"-A", impostor, "-j", "ACCEPT"}, {"-I", "FORWARD", "1", "-j", impostor}} {
		if out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("iptables %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() {
		_ = exec.Command("iptables", "-w", "-D", "FORWARD", "-j", impostor).Run()
		_ = exec.Command("iptables", "-w", "-F", impostor).Run()
		_ = exec.Command("iptables", "-w", "-X", impostor).Run()
	})
	if err := a.net.Check(ctx); err == nil || !strings.Contains(err.Error(), impostor) {
		t.Fatalf("Check with an unbound agent-like chain first: %v", err)
	}
	if repaired, err := a.net.Rules().Reconcile(ctx); !repaired || err != nil {
		t.Fatalf("Reconcile: repaired %v, %v", repaired, err)
	}
	if err := a.net.Check(ctx); err != nil {
		t.Fatal(err)
	}
}
