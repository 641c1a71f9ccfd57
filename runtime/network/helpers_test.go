package network

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/host-agent/host-agent/internal/testenv"
)

// requireRoot is the gate of this package's integration tests: root
// (network namespaces, iptables), nft and the CNI plugins (see
// testenv.Require).
func requireRoot(t *testing.T) {
	t.Helper()
	testenv.Require(t, "nft")
	if err := FindPlugins(DefaultPluginDirs); err != nil {
		testenv.Unavailable(t, err.Error())
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// testNet is one test's rentals network and the namespaces standing in for
// the world around it. Every name carries the test's tag, so that nothing
// clashes with a real agent on the host or with another test, and
// everything is removed at the end, also when the test fails.
type testNet struct {
	t   *testing.T
	tag string
	net *Network
	n   int // peers made
}

// newTestNet builds a Network on a fresh bridge and chains. subnet is the
// rentals' subnet; mod adjusts the configuration.
func newTestNet(t *testing.T, subnet string, mod func(*Config)) *testNet {
	t.Helper()
	requireRoot(t)
	testenv.LockHostNetwork(t)
	return anotherTestNet(t, subnet, mod)
}

// anotherTestNet is newTestNet for a test that holds the host's network
// already: a second agent's network.
func anotherTestNet(t *testing.T, subnet string, mod func(*Config)) *testNet {
	t.Helper()
	tag := randHex(3)
	state := t.TempDir()
	cfg := Config{
		Subnet:      netip.MustParsePrefix(subnet),
		NetworkName: "hatest-" + tag,
		Bridge:      "hat" + tag,
		ChainPrefix: "HAT" + strings.ToUpper(tag),
		NetNSPrefix: "hatest-" + tag + "-",
		IPAMDataDir: filepath.Join(state, "ipam"),
		StateDir:    filepath.Join(state, "network"),
		DNS:         tnDNS,
	}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tn := &testNet{t: t, tag: tag, net: n}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := n.Sweep(ctx, func(string) bool { return false }); err != nil {
			t.Errorf("cleanup sweep: %v", err)
		}
		if err := n.RemoveRules(ctx); err != nil {
			t.Errorf("cleanup rules: %v", err)
		}
		if l, err := netlink.LinkByName(cfg.Bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	if err := n.Init(context.Background()); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return tn
}

// tnDNS is the test networks' resolver, in a namespace TestRentalIsolation
// makes.
var tnDNS = []netip.Addr{netip.MustParseAddr("10.214.53.2")}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// peer is a network namespace joined to the host by a veth pair: a user on
// the internet, a host on the provider's LAN, a metadata server.
type peer struct {
	name   string
	ns     string // pinned namespace path
	hostIf string
	addr   netip.Addr // its main address
}

// addPeer makes a namespace with address nsAddr/bits on a veth whose host
// end has hostAddr/bits; extra addresses are put on the namespace's
// loopback and routed to it from the host. Its default route leads back
// through the host.
func (tn *testNet) addPeer(name, hostAddr, nsAddr string, bits int, extra ...string) *peer {
	t := tn.t
	t.Helper()
	tn.n++
	p := &peer{
		name:   name,
		ns:     filepath.Join(DefaultNetNSDir, fmt.Sprintf("hatest-peer-%s-%s", tn.tag, name)),
		hostIf: fmt.Sprintf("hap%s%d", tn.tag, tn.n),
		addr:   netip.MustParseAddr(nsAddr),
	}
	if err := createNetNS(p.ns); err != nil {
		t.Fatalf("peer %s: %v", name, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(p.hostIf); err == nil {
			_ = netlink.LinkDel(l)
		}
		if err := removeNetNS(p.ns); err != nil {
			t.Errorf("remove peer %s: %v", name, err)
		}
	})
	nsh, err := netns.GetFromPath(p.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.hostIf}, PeerName: "p" + p.hostIf}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("peer %s veth: %v", name, err)
	}
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+p.hostIf+"/disable_ipv6", []byte("1"), 0o644)
	pl, err := netlink.LinkByName("p" + p.hostIf)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(pl, int(nsh)); err != nil {
		t.Fatal(err)
	}
	hl, _ := netlink.LinkByName(p.hostIf)
	must(t, netlink.AddrAdd(hl, &netlink.Addr{IPNet: ipnet(hostAddr, bits)}))
	must(t, netlink.LinkSetUp(hl))
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	in, err := h.LinkByName("p" + p.hostIf)
	if err != nil {
		t.Fatal(err)
	}
	must(t, h.AddrAdd(in, &netlink.Addr{IPNet: ipnet(nsAddr, bits)}))
	must(t, h.LinkSetUp(in))
	lo, _ := h.LinkByName("lo")
	must(t, h.LinkSetUp(lo))
	for _, e := range extra {
		must(t, h.AddrAdd(lo, &netlink.Addr{IPNet: ipnet(e, 32)}))
		must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: hl.Attrs().Index, Dst: ipnet(e, 32), Gw: net.ParseIP(nsAddr)}))
	}
	must(t, h.RouteAdd(&netlink.Route{LinkIndex: in.Attrs().Index, Gw: net.ParseIP(hostAddr)}))
	return p
}

func ipnet(addr string, bits int) *net.IPNet {
	return &net.IPNet{IP: net.ParseIP(addr).To4(), Mask: net.CIDRMask(bits, 32)}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// serve runs a TCP server in namespace path (the host's when empty) on
// addr that greets each client with greeting and the client's address as
// it sees it, and a UDP one on the same port answering the same way.
// It returns the TCP port.
func serve(t *testing.T, path, addr, greeting string) int {
	t.Helper()
	var l net.Listener
	var pc net.PacketConn
	listen := func() {
		var err error
		if l, err = net.Listen("tcp4", addr); err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		host, _, _ := net.SplitHostPort(addr)
		if pc, err = net.ListenPacket("udp4", net.JoinHostPort(host, fmt.Sprint(port))); err != nil {
			t.Fatal(err)
		}
	}
	if path == "" {
		listen()
	} else {
		testenv.InNetNS(t, path, listen)
	}
	t.Cleanup(func() { l.Close(); pc.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s from %s\n", greeting, c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_ = n
			_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s from %s\n", greeting, from.(*net.UDPAddr).IP)), from)
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// dialTimeout bounds how long a client waits for an answer that the rules
// are expected to stop (they reject, so a pass is quick; a drop waits).
const dialTimeout = 3 * time.Second

// tcpGreeting connects from namespace path (host when empty) to addr:port
// and returns the first line the server sends, or the error.
func tcpGreeting(t *testing.T, path string, addr netip.Addr, port int) (string, error) {
	t.Helper()
	var c net.Conn
	var err error
	dial := func() {
		c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(addr, uint16(port)).String(), dialTimeout)
	}
	if path == "" {
		dial()
	} else {
		testenv.InNetNS(t, path, dial)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(dialTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// udpGreeting sends a datagram from namespace path to addr:port and
// returns the answer.
func udpGreeting(t *testing.T, path string, addr netip.Addr, port int) (string, error) {
	t.Helper()
	var c net.Conn
	var err error
	dial := func() { c, err = net.Dial("udp4", netip.AddrPortFrom(addr, uint16(port)).String()) }
	testenv.InNetNS(t, path, dial)
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for range 3 {
		if _, err := c.Write([]byte("ping")); err != nil {
			return "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return strings.TrimSpace(string(buf[:n])), nil
		}
	}
	return "", fmt.Errorf("no answer from udp %s:%d", addr, port)
}

// counts are what must not grow over setup and teardown cycles.
type counts struct {
	Rules, NftLines, Leases, NetNS, Veths, Journal int
}

func (tn *testNet) counts() counts {
	tn.t.Helper()
	var c counts
	out, err := exec.Command("iptables-save").Output()
	if err != nil {
		tn.t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, ":") {
			c.Rules++
		}
	}
	nft, err := exec.Command("nft", "list", "ruleset").Output()
	if err != nil {
		tn.t.Fatal(err)
	}
	c.NftLines = strings.Count(string(nft), "\n")
	leases, _ := tn.net.leases()
	c.Leases = len(leases)
	ents, _ := os.ReadDir(DefaultNetNSDir)
	c.NetNS = len(ents)
	links, _ := netlink.LinkList()
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok {
			c.Veths++
		}
	}
	ids, _ := tn.net.journalIDs()
	c.Journal = len(ids)
	return c
}
