package network

import (
	"context"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/coreos/go-iptables/iptables"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/hostport"
)

// A payload listening on a TCP and a UDP port inside a rental's namespace
// answers a client in a "user" namespace through the host's address and the
// host ports the allocator handed out; the client's own address reaches the
// payload (no masquerade on the way in).
func TestPublishedPortsAnswerFromUserNamespace(t *testing.T) {
	tn := newTestNet(t, "10.215.61.0/24", nil)
	user := tn.addPeer("user", "198.51.100.1", "198.51.100.2", 24)
	ctx := context.Background()

	alloc := hostport.NewAllocator(hostport.Range{First: 45000, Last: 45099}, nil)
	ports, err := alloc.Reserve("pub-1", []hostport.PortRequest{{ContainerPort: 8080}, {ContainerPort: 8080, Protocol: hostport.UDP}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := tn.net.Setup(ctx, "pub-1", ports, "")
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() { _ = tn.net.Teardown(context.Background(), "pub-1", ports) })
	if !tn.net.cfg.Subnet.Contains(a.IP) {
		t.Fatalf("instance IP %s not in %s", a.IP, tn.net.cfg.Subnet)
	}
	serve(t, a.NetNS, "0.0.0.0:8080", "payload")

	hostAddr := netip.MustParseAddr("198.51.100.1")
	testenv.MustRouteInto(t, hostAddr, user.hostIf)
	for _, m := range ports {
		var got string
		var err error
		if m.Protocol == hostport.TCP {
			got, err = tcpGreeting(t, user.ns, hostAddr, int(m.HostPort))
		} else {
			got, err = udpGreeting(t, user.ns, hostAddr, int(m.HostPort))
		}
		if err != nil {
			t.Fatalf("%s host port %d from the user namespace: %v", m.Protocol, m.HostPort, err)
		}
		if want := "payload from 198.51.100.2"; got != want {
			t.Fatalf("%s host port %d answered %q, want %q", m.Protocol, m.HostPort, got, want)
		}
	}
	// A host port nobody published does not lead to the payload.
	if got, err := tcpGreeting(t, user.ns, hostAddr, 8080); err == nil {
		t.Fatalf("container port 8080 answered on the host's own port 8080: %q", got)
	}

	// What the tenant is told.
	env := strings.Join(hostport.Env(ports, ""), " ")
	for _, m := range ports {
		if !strings.Contains(env, "HOST_PORT_"+strings.ToUpper(m.Protocol)+"_8080="+itoa(int(m.HostPort))) {
			t.Fatalf("env %q does not announce %+v", env, m)
		}
	}

	// portmap's snat would have set route_localnet on the bridge.
	b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + tn.net.cfg.Bridge + "/route_localnet")
	if err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("route_localnet on the bridge = %q, %v; want 0", b, err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// Check passes with the rules in place and names what is missing once an
// operator removed them; Init writes them again.
func TestCheckSeesRemovedRules(t *testing.T) {
	tn := newTestNet(t, "10.215.71.0/24", nil)
	ctx := context.Background()
	if err := tn.net.Check(ctx); err != nil {
		t.Fatalf("Check after Init: %v", err)
	}
	must(t, tn.net.RemoveRules(ctx))
	err := tn.net.Check(ctx)
	if err == nil || !strings.Contains(err.Error(), tn.net.forwardChain()) {
		t.Fatalf("Check without rules = %v, want the missing FORWARD jump named", err)
	}
	must(t, tn.net.Init(ctx))
	if err := tn.net.Check(ctx); err != nil {
		t.Fatalf("Check after Init again: %v", err)
	}
	if st := tn.net.Status(); st.Subnet != "10.215.71.0/24" || st.Bridge != tn.net.cfg.Bridge || len(st.DNS) != 1 {
		t.Fatalf("Status = %+v", st)
	}
}

// Software that inserts its own jump above the agent's (Docker does at its
// start) does not get ahead of the isolation: the next Setup puts the
// agent's jump first again.
func TestJumpKeptFirst(t *testing.T) {
	tn := newTestNet(t, "10.215.72.0/24", nil)
	ctx := context.Background()
	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	other := tn.net.cfg.ChainPrefix + "-OTHER"
	must(t, ipt.NewChain("filter", other))
	t.Cleanup(func() {
		_ = ipt.DeleteIfExists("filter", "FORWARD", "-j", other)
		_ = ipt.ClearAndDeleteChain("filter", other)
	})
	must(t, ipt.Insert("filter", "FORWARD", 1, "-j", other))
	if _, err := tn.net.Setup(ctx, "first", nil, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tn.net.Teardown(context.Background(), "first", nil) })
	rules, err := ipt.List("filter", "FORWARD")
	if err != nil {
		t.Fatal(err)
	}
	if want := "-A FORWARD -j " + tn.net.forwardChain(); len(rules) < 2 || rules[1] != want {
		t.Fatalf("FORWARD after Setup: %v; want %q first", rules, want)
	}
	n := 0
	for _, r := range rules {
		if strings.HasSuffix(r, "-j "+tn.net.forwardChain()) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d jumps to the agent's chain", n)
	}
}

// After an operator removed the agent's chains, the next Setup writes them
// again instead of failing.
func TestSetupRewritesRemovedRules(t *testing.T) {
	tn := newTestNet(t, "10.215.73.0/24", nil)
	ctx := context.Background()
	must(t, tn.net.RemoveRules(ctx))
	if _, err := tn.net.Setup(ctx, "after-flush", nil, ""); err != nil {
		t.Fatalf("Setup after the rules were removed: %v", err)
	}
	t.Cleanup(func() { _ = tn.net.Teardown(context.Background(), "after-flush", nil) })
	if err := tn.net.Check(ctx); err != nil {
		t.Fatalf("Check after Setup: %v", err)
	}
}
