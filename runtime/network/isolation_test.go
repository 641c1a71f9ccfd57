package network

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// From a rental: hosts on the provider's LAN (10.x, 192.168.x), the cloud
// metadata address, another rental, the host's address on the bridge and a
// service on the host do not answer; an allowed exception on the LAN, an
// "internet" host and the configured resolver on port 53 do. Every target
// answers the host itself, so a failure from the rental is the rules' doing.
func TestRentalIsolation(t *testing.T) {
	tn := newTestNet(t, "10.215.62.0/24", func(c *Config) {
		c.AllowedEgress = []netip.Prefix{netip.MustParsePrefix("10.214.2.0/24")}
	})
	ctx := context.Background()
	lan10 := tn.addPeer("lan10", "10.214.1.1", "10.214.1.2", 24)
	lan192 := tn.addPeer("lan192", "192.168.213.1", "192.168.213.2", 24)
	meta := tn.addPeer("metadata", "169.254.213.1", "169.254.213.2", 30, "169.254.169.254")
	allowed := tn.addPeer("allowed", "10.214.2.1", "10.214.2.2", 24)
	inet := tn.addPeer("internet", "203.0.113.1", "203.0.113.2", 24)
	dns := tn.addPeer("dns", "10.214.53.1", "10.214.53.2", 24)
	metaAddr := netip.MustParseAddr("169.254.169.254")

	for _, p := range []*peer{lan10, lan192, meta, allowed, inet, dns} {
		serve(t, p.ns, "0.0.0.0:7000", p.name)
	}
	testenv.ServeDNS(t, dns.ns, map[string]string{"payload.test.": "203.0.113.77"})
	hostPort := serve(t, "", "0.0.0.0:0", "host")

	a, err := tn.net.Setup(ctx, "iso-a", nil, "")
	if err != nil {
		t.Fatalf("Setup a: %v", err)
	}
	b, err := tn.net.Setup(ctx, "iso-b", nil, "")
	if err != nil {
		t.Fatalf("Setup b: %v", err)
	}
	serve(t, b.NetNS, "0.0.0.0:7000", "rental-b")
	br := tn.net.cfg.Bridge

	// Controls: each target answers the host.
	targets := []struct {
		name string
		addr netip.Addr
		port int
		dev  string
	}{
		{"lan10", lan10.addr, 7000, lan10.hostIf},
		{"lan192", lan192.addr, 7000, lan192.hostIf},
		{"metadata", metaAddr, 7000, meta.hostIf},
		{"dns host, not port 53", dns.addr, 7000, dns.hostIf},
		{"rental b", b.IP, 7000, br},
		{"host on the bridge address", a.Gateway, hostPort, br},
		{"host on its internet address", netip.MustParseAddr("203.0.113.1"), hostPort, inet.hostIf},
	}
	for _, tc := range targets {
		testenv.MustRouteInto(t, tc.addr, tc.dev)
		if _, err := tcpGreeting(t, "", tc.addr, tc.port); err != nil {
			t.Fatalf("control: %s (%s:%d) does not answer the host: %v", tc.name, tc.addr, tc.port, err)
		}
	}
	for _, tc := range targets {
		t.Run("blocked "+tc.name, func(t *testing.T) {
			if got, err := tcpGreeting(t, a.NetNS, tc.addr, tc.port); err == nil {
				t.Errorf("rental a reached %s at %s:%d: %q", tc.name, tc.addr, tc.port, got)
			}
		})
	}
	t.Run("blocked udp lan10", func(t *testing.T) {
		if got, err := udpGreeting(t, a.NetNS, lan10.addr, 7000); err == nil {
			t.Errorf("rental a reached lan10 over udp: %q", got)
		}
	})
	t.Run("rental b cannot reach a either", func(t *testing.T) {
		serve(t, a.NetNS, "0.0.0.0:7001", "rental-a")
		if got, err := tcpGreeting(t, b.NetNS, a.IP, 7001); err == nil {
			t.Errorf("rental b reached rental a: %q", got)
		}
	})

	for _, tc := range []struct {
		name string
		p    *peer
		want string
	}{
		// Masqueraded: the internet host sees the host's address.
		{"internet", inet, "internet from 203.0.113.1"},
		{"allowed exception", allowed, "allowed from 10.214.2.1"},
	} {
		t.Run("reaches "+tc.name, func(t *testing.T) {
			testenv.MustRouteInto(t, tc.p.addr, tc.p.hostIf)
			got, err := tcpGreeting(t, a.NetNS, tc.p.addr, 7000)
			if err != nil || got != tc.want {
				t.Errorf("rental a to %s: %q, %v; want %q", tc.name, got, err, tc.want)
			}
		})
	}

	t.Run("dns through the generated resolv.conf", func(t *testing.T) {
		servers, _, err := readResolvConf(a.Files.ResolvConf)
		if err != nil || len(servers) != 1 || servers[0] != dns.addr {
			t.Fatalf("resolv.conf names %v (%v), want %s", servers, err, dns.addr)
		}
		testenv.MustRouteInto(t, servers[0], dns.hostIf)
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var c net.Conn
			var err error
			testenv.InNetNS(t, a.NetNS, func() {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, net.JoinHostPort(servers[0].String(), "53"))
			})
			return c, err
		}}
		addrs, err := r.LookupHost(ctx, "payload.test")
		if err != nil || len(addrs) != 1 || addrs[0] != "203.0.113.77" {
			t.Fatalf("lookup from rental a: %v, %v", addrs, err)
		}
		hosts, _ := os.ReadFile(a.Files.Hosts)
		if !strings.Contains(string(hosts), a.IP.String()+"\tiso-a\n") {
			t.Errorf("hosts file lacks the rental's own name: %q", hosts)
		}
		if h, _ := os.ReadFile(a.Files.Hostname); string(h) != "iso-a\n" {
			t.Errorf("hostname file = %q", h)
		}
	})

	t.Run("no IPv6 on the bridge or in the rental", func(t *testing.T) {
		bl, err := netlink.LinkByName(br)
		if err != nil {
			t.Fatal(err)
		}
		if addrs, _ := netlink.AddrList(bl, netlink.FAMILY_V6); len(addrs) > 0 {
			t.Errorf("bridge has IPv6 addresses %v", addrs)
		}
		nsh, err := netns.GetFromPath(a.NetNS)
		if err != nil {
			t.Fatal(err)
		}
		defer nsh.Close()
		h, err := netlink.NewHandleAt(nsh)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if addrs, _ := h.AddrList(nil, netlink.FAMILY_V6); len(addrs) > 0 {
			t.Errorf("rental has IPv6 addresses %v", addrs)
		}
	})

	t.Run("bridge ports isolated", func(t *testing.T) {
		links, _ := netlink.LinkList()
		n := 0
		for _, l := range links {
			if l.Attrs().MasterIndex != 0 && l.Attrs().MasterIndex == mustLink(t, br).Attrs().Index {
				n++
				p, err := netlink.LinkGetProtinfo(l)
				if err != nil || !p.Isolated {
					t.Errorf("bridge port %s is not isolated (%v)", l.Attrs().Name, err)
				}
			}
		}
		if n != 2 {
			t.Errorf("%d ports on the bridge, want 2", n)
		}
	})
	must(t, tn.net.Teardown(ctx, "iso-a", nil))
	must(t, tn.net.Teardown(ctx, "iso-b", nil))
}

func mustLink(t *testing.T, name string) netlink.Link {
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
