package conformance

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	"github.com/host-agent/host-agent/runtime/network"
)

// testNetwork: on the rentals' network, two rentals publishing the same
// container port get distinct host ports from the allocator, answered by
// Start and Get; a user reaches each on the host's address, and the
// rental sees its host port in HOST_PORT_TCP_8080; a rental reaches the
// internet but not the other rental, the LAN, the host or its bridge
// address; a name resolves through the resolver the rental's resolv.conf
// names, which asks RENTAL_DNS in a blocked range (containerd names it,
// Docker names its own, which forwards to it), and the resolver's host is
// not reached on another port; after a terminate the port is free for the
// next rental.
func testNetwork(t *testing.T, h Harness) {
	sc := h.NewScope(t)
	nw, ok := sc.(Networker)
	if !ok {
		t.Fatalf("%s: the scope cannot put rentals on a network", h.Name)
	}
	testenv.LockHostNetwork(t)
	user := testenv.AddPeer(t, "user", "198.51.100.9", "198.51.100.10", 30)
	inet := testenv.AddPeer(t, "inet", "203.0.113.9", "203.0.113.10", 30)
	lan := testenv.AddPeer(t, "lan", "10.77.9.1", "10.77.9.2", 30)
	dns := testenv.AddPeer(t, "dns", "10.77.9.5", "10.77.9.6", 30)
	testenv.ServeDNS(t, dns.NS, map[string]string{"payload.test.": "203.0.113.77"})
	for _, p := range []*testenv.Peer{user, inet, lan, dns} {
		testenv.MustRouteInto(t, p.Addr, p.HostIf)
	}
	testenv.MustRouteInto(t, user.Host, user.HostIf)

	rec := NewRecorder()
	be, info := nw.OpenNetworked(t, rec, network.DefaultBlockedEgress, user.Host, dns.Addr)
	rng, err := hostport.ParseRange("41400-41401")
	if err != nil {
		t.Fatal(err)
	}
	l := lifecycle.New(be, lifecycle.Options{
		Kinds:  []runtime.Admission{lifecycle.PortReservations{Alloc: hostport.NewAllocator(rng, nil)}},
		Events: rec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	t.Cleanup(func() { l.Close() })

	start := func(id string) runtime.Instance {
		t.Helper()
		s := spec(h, id, append([]string{"cat", "/proc/self/status"}, append(ipv6Probe, "echo", "END", "serve", "8080", "sleep", "inf")...)...)
		s.Ports = []hostport.PortRequest{{ContainerPort: 8080, Protocol: hostport.TCP}}
		inst, err := l.Start(Ctx(t), s)
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		if len(inst.Ports) != 1 || inst.Ports[0].ContainerPort != 8080 || !rng.Contains(inst.Ports[0].HostPort) {
			t.Fatalf("%s answered ports %+v, want 8080/tcp on a host port in %s", id, inst.Ports, rng)
		}
		return inst
	}
	userReaches := func(inst runtime.Instance) {
		t.Helper()
		hp := int(inst.Ports[0].HostPort)
		want := fmt.Sprintf("HOST_PORT_TCP_8080=%d HOST_PORT_UDP_8080= from %s", hp, user.Addr)
		var got string
		for range 40 {
			if got, err = testenv.Greeting(t, user.NS, "tcp", user.Host, hp); err == nil && got != "" {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if got != want {
			t.Fatalf("user -> %s:%d answered %q (%v), want %q", user.Host, hp, got, err, want)
		}
	}

	a, b := start(uniqueID(t, "net-a")), start(uniqueID(t, "net-b"))
	if a.Ports[0].HostPort == b.Ports[0].HostPort {
		t.Fatalf("both rentals got host port %d", a.Ports[0].HostPort)
	}
	if got, err := l.Get(Ctx(t), a.ID); err != nil || len(got.Ports) != 1 || got.Ports[0] != a.Ports[0] {
		t.Fatalf("Get answered ports %+v (%v), want %+v", got.Ports, err, a.Ports)
	}
	userReaches(a)
	userReaches(b)
	// On the rentals' network too: no CAP_NET_RAW, no IPv6 address, and
	// every rental's port of the bridge isolated from the others.
	checkConfinedStatus(t, waitLogs(t, &Agent{Lifecycle: l}, a.ID, "END"))
	if open, err := network.UnisolatedPorts(info.Bridge); err != nil || len(open) > 0 {
		t.Errorf("ports of bridge %q without isolation: %v (%v)", info.Bridge, open, err)
	}
	if _, err := l.Start(Ctx(t), func() runtime.InstanceSpec {
		s := spec(h, uniqueID(t, "net-c"), "sleep", "inf")
		s.Ports = []hostport.PortRequest{{ContainerPort: 22, Protocol: hostport.TCP}}
		return s
	}()); err == nil || !strings.Contains(err.Error(), "port") {
		t.Errorf("a third rental on a range of two ports: %v, want a refusal naming ports", err)
	}

	bNow, err := l.Get(Ctx(t), b.ID)
	if err != nil {
		t.Fatal(err)
	}
	bAddr, gw := info.AddrOf(t, bNow), info.Subnet.Addr().Next()
	if !info.Subnet.Contains(bAddr) {
		t.Fatalf("rental b has address %s, outside %s", bAddr, info.Subnet)
	}
	inetPort := testenv.ServeIn(t, inet.NS, inet.Addr.String()+":0", "internet")
	lanPort := testenv.ServeIn(t, lan.NS, lan.Addr.String()+":0", "lan")
	hostPort := testenv.ServeIn(t, "", "0.0.0.0:0", "host")
	dnsPort := testenv.ServeIn(t, dns.NS, dns.Addr.String()+":0", "resolver's host")
	aNS := fmt.Sprintf("/proc/%d/ns/net", a.Pid)
	if line, err := testenv.Greeting(t, aNS, "tcp", inet.Addr, inetPort); err != nil || !strings.HasPrefix(line, "internet from ") {
		t.Fatalf("rental -> internet %s: %q, %v; want an answer", inet.Addr, line, err)
	}
	resolver := rentalResolver(t, a)
	if got, err := testenv.LookupIn(t, aNS, netip.AddrPortFrom(resolver, 53), "payload.test"); err != nil || got != netip.MustParseAddr("203.0.113.77") {
		t.Errorf("rental looks up payload.test at %s, its resolv.conf's: %v, %v; want 203.0.113.77 from RENTAL_DNS %s", resolver, got, err, dns.Addr)
	}
	for _, c := range []struct {
		what string
		addr netip.Addr
		port int
	}{
		{"another rental", bAddr, 8080},
		{"the LAN", lan.Addr, lanPort},
		{"the resolver's host, not on port 53", dns.Addr, dnsPort},
		{"the host", user.Host, hostPort},
		{"the host's bridge address", gw, hostPort},
	} {
		if line, err := testenv.Greeting(t, aNS, "tcp", c.addr, c.port); err == nil {
			t.Errorf("rental reached %s at %s:%d: %q", c.what, c.addr, c.port, line)
		}
	}

	if err := l.Terminate(Ctx(t), a.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	c := start(uniqueID(t, "net-d"))
	if c.Ports[0].HostPort != a.Ports[0].HostPort {
		t.Errorf("the next rental got host port %d, want the one freed, %d", c.Ports[0].HostPort, a.Ports[0].HostPort)
	}
	userReaches(c)
	for _, id := range []string{b.ID, c.ID} {
		if err := l.Terminate(Ctx(t), id, time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// rentalResolver is the first nameserver of the running rental's
// /etc/resolv.conf.
func rentalResolver(t *testing.T, inst runtime.Instance) netip.Addr {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/resolv.conf", inst.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil {
				return a
			}
		}
	}
	t.Fatalf("no nameserver in the rental's resolv.conf:\n%s", b)
	return netip.Addr{}
}
