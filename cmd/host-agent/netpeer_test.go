package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/dns/dnsmessage"
)

// peer is a network namespace of the test's own, joined to the host by a
// veth pair: it stands in for a user on the internet, a host on the
// provider's LAN or the cloud metadata server. Its default route leads back
// through the host.
type peer struct {
	name   string
	ns     string // pinned namespace path
	hostIf string
	host   netip.Addr // the host's end
	addr   netip.Addr // the namespace's main address
}

// addPeer makes a namespace with nsAddr/bits on a veth whose host end has
// hostAddr/bits; extra addresses sit on the namespace's loopback, routed to
// it from the host.
func addPeer(t *testing.T, name, hostAddr, nsAddr string, bits int, extra ...string) *peer {
	t.Helper()
	tag := randTag()
	p := &peer{
		name:   name,
		ns:     filepath.Join("/var/run/netns", "hapeer-"+tag),
		hostIf: "hap" + tag,
		host:   netip.MustParseAddr(hostAddr),
		addr:   netip.MustParseAddr(nsAddr),
	}
	nsName := filepath.Base(p.ns)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", p.hostIf).Run()
		_ = exec.Command("ip", "netns", "del", nsName).Run()
	})
	cmds := [][]string{
		{"netns", "add", nsName},
		{"link", "add", p.hostIf, "type", "veth", "peer", "name", "p" + p.hostIf},
		{"link", "set", "p" + p.hostIf, "netns", nsName},
		{"addr", "add", fmt.Sprintf("%s/%d", hostAddr, bits), "dev", p.hostIf},
		{"link", "set", p.hostIf, "up"},
		{"-n", nsName, "addr", "add", fmt.Sprintf("%s/%d", nsAddr, bits), "dev", "p" + p.hostIf},
		{"-n", nsName, "link", "set", "p" + p.hostIf, "up"},
		{"-n", nsName, "link", "set", "lo", "up"},
		{"-n", nsName, "route", "add", "default", "via", hostAddr},
	}
	for _, e := range extra {
		cmds = append(cmds,
			[]string{"-n", nsName, "addr", "add", e + "/32", "dev", "lo"},
			[]string{"route", "add", e + "/32", "via", nsAddr, "dev", p.hostIf})
	}
	for _, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			t.Fatalf("peer %s: ip %s: %v: %s", name, strings.Join(c, " "), err, out)
		}
	}
	return p
}

func randTag() string {
	b := make([]byte, 3)
	f, _ := os.Open("/dev/urandom")
	defer f.Close()
	_, _ = io.ReadFull(f, b)
	return fmt.Sprintf("%x", b)
}

// mustRouteInto stops the test unless the host routes addr out of one of
// devs (the test's own links) or to itself on one of them: packets may only
// go to namespaces the test created.
func mustRouteInto(t *testing.T, addr netip.Addr, devs ...string) {
	t.Helper()
	out, err := exec.Command("ip", "-o", "route", "get", addr.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ip route get %s: %v: %s", addr, err, out)
	}
	s := string(out)
	for _, d := range devs {
		if strings.Contains(s, " dev "+d+" ") {
			return
		}
		if strings.HasPrefix(s, "local ") {
			if l, err := netlink.LinkByName(d); err == nil {
				addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
				for _, a := range addrs {
					if a.IP.Equal(net.IP(addr.AsSlice())) {
						return
					}
				}
			}
		}
	}
	t.Fatalf("refusing to send to %s: the host routes it %q, not into the test's own links %v", addr, strings.TrimSpace(s), devs)
}

// inNetNS runs fn with the calling thread in the namespace at path.
func inNetNS(t *testing.T, path string, fn func()) {
	t.Helper()
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err) // a thread left in a test namespace must not be reused
		}
	}()
	fn()
}

// serveIn runs a TCP server in namespace path (the host's when empty) on
// addr, greeting each client with greeting and the client's address as it
// sees it. It returns the port.
func serveIn(t *testing.T, path, addr, greeting string) int {
	t.Helper()
	var l net.Listener
	listen := func() {
		var err error
		if l, err = net.Listen("tcp4", addr); err != nil {
			t.Fatal(err)
		}
	}
	if path == "" {
		listen()
	} else {
		inNetNS(t, path, listen)
	}
	t.Cleanup(func() { l.Close() })
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
	return l.Addr().(*net.TCPAddr).Port
}

const dialTimeout = 3 * time.Second

// greeting sends from namespace path (the host's when empty) to addr:port
// over proto (a datagram for udp) and returns the first line answered.
func greeting(t *testing.T, path, proto string, addr netip.Addr, port int) (string, error) {
	t.Helper()
	var c net.Conn
	var err error
	dial := func() {
		c, err = net.DialTimeout(proto+"4", netip.AddrPortFrom(addr, uint16(port)).String(), dialTimeout)
	}
	if path == "" {
		dial()
	} else {
		inNetNS(t, path, dial)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	for range 3 {
		if proto == "udp" {
			if _, err := c.Write([]byte("ping")); err != nil {
				return "", err
			}
		}
		_ = c.SetDeadline(time.Now().Add(dialTimeout))
		line, rerr := bufio.NewReader(c).ReadString('\n')
		if rerr == nil || (rerr == io.EOF && line != "") {
			return strings.TrimSpace(line), nil
		}
		err = rerr
		if proto != "udp" {
			break
		}
	}
	return "", err
}

// serveDNS answers A queries for names on UDP port 53 in the namespace at
// path.
func serveDNS(t *testing.T, path string, names map[string]string) {
	t.Helper()
	var pc net.PacketConn
	inNetNS(t, path, func() {
		var err error
		if pc, err = net.ListenPacket("udp4", "0.0.0.0:53"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			resp := dnsmessage.Message{Header: dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true}, Questions: []dnsmessage.Question{q}}
			if ip, ok := names[q.Name.String()]; ok && q.Type == dnsmessage.TypeA {
				resp.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
					Body:   &dnsmessage.AResource{A: netip.MustParseAddr(ip).As4()},
				}}
			} else if !ok {
				resp.RCode = dnsmessage.RCodeNameError
			}
			if out, err := resp.Pack(); err == nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
}

// netCounts are what must come back to where they were after rentals come
// and go: the host's iptables rules in every table, host-local's leases of
// the agent's network, network namespaces and veths (the host's, whoever
// made them: the test runs alone on them, see the caller).
type netCounts struct {
	Rules, Leases, NetNS, Veths int
}

func (tn *testNetwork) counts(t *testing.T) netCounts {
	t.Helper()
	var c netCounts
	out, err := exec.Command("iptables-save").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, ":") {
			c.Rules++
		}
	}
	dir := filepath.Join("/var/lib/cni/networks", tn.cfg.NetworkName)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			c.Leases++
		}
	}
	ns, _ := os.ReadDir("/var/run/netns")
	c.NetNS = len(ns)
	links, _ := netlink.LinkList()
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok {
			c.Veths++
		}
	}
	return c
}

// ourRules are the iptables lines of every table that belong to the test's
// network: its chains, its bridge, its subnet, and portmap's.
func (tn *testNetwork) ourRules(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("iptables-save").Output()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, tn.cfg.ChainPrefix) || strings.Contains(l, tn.cfg.Bridge) ||
			strings.Contains(l, tn.subnet.String()) || strings.Contains(l, "CNI-") {
			lines = append(lines, l)
		}
	}
	return lines
}
