package network

import (
	"context"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

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
	mustRouteInto(t, hostAddr, user.hostIf)
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

	// What the tenant is told, and what the labels record.
	env := strings.Join(hostport.Env(ports, ""), " ")
	for _, m := range ports {
		if !strings.Contains(env, "HOST_PORT_"+strings.ToUpper(m.Protocol)+"_8080="+itoa(int(m.HostPort))) {
			t.Fatalf("env %q does not announce %+v", env, m)
		}
	}
	back, err := FromLabels("pub-1", a.Labels())
	if err != nil || back.IP != a.IP || back.NetNS != a.NetNS || len(back.Ports) != 2 || back.Ports[1] != ports[1] {
		t.Fatalf("labels round trip: %+v, %v; want %+v", back, err, a)
	}

	// portmap's snat would have set route_localnet on the bridge.
	b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + tn.net.cfg.Bridge + "/route_localnet")
	if err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("route_localnet on the bridge = %q, %v; want 0", b, err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
