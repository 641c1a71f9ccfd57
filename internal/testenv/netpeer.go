package testenv

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
)

// Peer is a network namespace of the test's own, joined to the host by a
// veth pair: it stands in for a user on the internet, a host on the
// provider's LAN or the cloud metadata server. Its default route leads back
// through the host.
type Peer struct {
	Name   string
	NS     string // pinned namespace path
	HostIf string
	Host   netip.Addr // the host's end
	Addr   netip.Addr // the namespace's main address
}

// AddPeer makes a namespace with nsAddr/bits on a veth whose host end has
// hostAddr/bits; extra addresses sit on the namespace's loopback, routed to
// it from the host.
func AddPeer(t testing.TB, name, hostAddr, nsAddr string, bits int, extra ...string) *Peer {
	t.Helper()
	tag := RandTag()
	p := &Peer{
		Name:   name,
		NS:     filepath.Join("/var/run/netns", "hapeer-"+tag),
		HostIf: "hap" + tag,
		Host:   netip.MustParseAddr(hostAddr),
		Addr:   netip.MustParseAddr(nsAddr),
	}
	nsName := filepath.Base(p.NS)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", p.HostIf).Run()
		_ = exec.Command("ip", "netns", "del", nsName).Run()
	})
	cmds := [][]string{
		{"netns", "add", nsName},
		{"link", "add", p.HostIf, "type", "veth", "peer", "name", "p" + p.HostIf},
		{"link", "set", "p" + p.HostIf, "netns", nsName},
		{"addr", "add", fmt.Sprintf("%s/%d", hostAddr, bits), "dev", p.HostIf},
		{"link", "set", p.HostIf, "up"},
		{"-n", nsName, "addr", "add", fmt.Sprintf("%s/%d", nsAddr, bits), "dev", "p" + p.HostIf},
		{"-n", nsName, "link", "set", "p" + p.HostIf, "up"},
		{"-n", nsName, "link", "set", "lo", "up"},
		{"-n", nsName, "route", "add", "default", "via", hostAddr},
	}
	for _, e := range extra {
		cmds = append(cmds,
			[]string{"-n", nsName, "addr", "add", e + "/32", "dev", "lo"},
			[]string{"route", "add", e + "/32", "via", nsAddr, "dev", p.HostIf})
	}
	for _, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			t.Fatalf("peer %s: ip %s: %v: %s", name, strings.Join(c, " "), err, out)
		}
	}
	return p
}

// RandTag is a short random tag for names of the test's own.
func RandTag() string {
	b := make([]byte, 3)
	f, _ := os.Open("/dev/urandom")
	defer f.Close()
	_, _ = io.ReadFull(f, b)
	return fmt.Sprintf("%x", b)
}

// MustRouteInto stops the test unless the host routes addr out of one of
// devs (the test's own links) or to itself on one of them: packets may only
// go to namespaces the test created.
func MustRouteInto(t testing.TB, addr netip.Addr, devs ...string) {
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

// InNetNS runs fn with the calling thread in the namespace at path.
func InNetNS(t testing.TB, path string, fn func()) {
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

// listenIn listens on TCP addr in namespace path (the host's when empty),
// closed when the test ends.
func listenIn(t testing.TB, path, addr string) net.Listener {
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
		InNetNS(t, path, listen)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// ServeIn runs a TCP server in namespace path (the host's when empty) on
// addr, greeting each client with greeting and the client's address as it
// sees it. It returns the port.
func ServeIn(t testing.TB, path, addr, greeting string) int {
	t.Helper()
	l := listenIn(t, path, addr)
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

// DialTimeout bounds each connection Greeting makes.
const DialTimeout = 3 * time.Second

// Greeting sends from namespace path (the host's when empty) to addr:port
// over proto (a datagram for udp) and returns the first line answered.
func Greeting(t testing.TB, path, proto string, addr netip.Addr, port int) (string, error) {
	t.Helper()
	var c net.Conn
	var err error
	dial := func() {
		c, err = net.DialTimeout(proto+"4", netip.AddrPortFrom(addr, uint16(port)).String(), DialTimeout)
	}
	if path == "" {
		dial()
	} else {
		InNetNS(t, path, dial)
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
		_ = c.SetDeadline(time.Now().Add(DialTimeout))
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

// ServeEcho runs a TCP server in namespace path (the host's when empty) on
// addr that sends back every line it reads, for connections that must stay
// open (one cut by the rules shows as an echo that never comes). It
// returns the port.
func ServeEcho(t testing.TB, path, addr string) int {
	t.Helper()
	l := listenIn(t, path, addr)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// DialIn opens a TCP connection from namespace path to addr:port.
func DialIn(t testing.TB, path string, addr netip.Addr, port int) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var err error
	InNetNS(t, path, func() {
		c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(addr, uint16(port)).String(), DialTimeout)
	})
	return c, err
}

// Echoes sends a line on c (to a ServeEcho server) and says whether it
// came back within DialTimeout.
func Echoes(c net.Conn, line string) bool {
	_ = c.SetDeadline(time.Now().Add(DialTimeout))
	if _, err := fmt.Fprintln(c, line); err != nil {
		return false
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.TrimSpace(got) == line
}
