package network

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/hostport"
)

// Setups and teardowns of many instances at once all succeed and leave
// nothing: the plugins, which race on iptables ("File exists") when run
// concurrently, are run one at a time.
func TestConcurrentSetupsAndTeardowns(t *testing.T) {
	tn := newTestNet(t, "10.215.69.0/24", nil)
	ctx := context.Background()
	alloc := hostport.NewAllocator(hostport.Range{First: 45700, Last: 45799}, nil)
	if _, err := tn.net.Setup(ctx, "warm", nil, ""); err != nil {
		t.Fatal(err)
	}
	must(t, tn.net.Teardown(ctx, "warm", nil))
	before := tn.counts()
	const n = 8
	ports := make([][]hostport.Mapping, n)
	for i := range n {
		var err error
		if ports[i], err = alloc.Reserve(fmt.Sprint("conc-", i), []hostport.PortRequest{{ContainerPort: 22}, {ContainerPort: 53, Protocol: "udp"}}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	ips := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := tn.net.Setup(ctx, fmt.Sprint("conc-", i), ports[i], "")
			if err != nil {
				t.Errorf("Setup %d: %v", i, err)
				return
			}
			ips[i] = a.IP.String()
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, ip := range ips {
		if ip != "" && seen[ip] {
			t.Errorf("IP %s given twice", ip)
		}
		seen[ip] = true
	}
	for i := range n {
		if r := natRulesFor(t, fmt.Sprint("conc-", i), tn.net.cfg.NetworkName); r == "" {
			t.Errorf("instance %d has no port rules", i)
		}
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tn.net.Teardown(ctx, fmt.Sprint("conc-", i), ports[i]); err != nil {
				t.Errorf("Teardown %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if after := tn.counts(); after != before {
		t.Fatalf("after concurrent setups and teardowns: %+v, before %+v", after, before)
	}
}

// A rental that forges its source address (a second address on its
// interface) or its MAC address gets nothing through, not even to the
// internet host it otherwise reaches. The internet host only counts
// datagrams and never answers, so that nothing is sent to a forged address
// even when the rules are broken; a datagram sent afterwards from the
// rental's real addresses marks when the forged ones would have arrived.
func TestSpoofedSourcesAreDropped(t *testing.T) {
	tn := newTestNet(t, "10.215.70.0/24", nil)
	ctx := context.Background()
	inet := tn.addPeer("internet", "203.0.113.1", "203.0.113.2", 24)
	sink := udpSink(t, inet.ns, "0.0.0.0:7001")
	a, err := tn.net.Setup(ctx, "spoof", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tn.net.Teardown(context.Background(), "spoof", nil) })
	testenv.MustRouteInto(t, inet.addr, inet.hostIf)

	send := func(from string, msg string) {
		t.Helper()
		testenv.InNetNS(t, a.NetNS, func() {
			var laddr *net.UDPAddr
			if from != "" {
				laddr = &net.UDPAddr{IP: net.ParseIP(from)}
			}
			c, err := net.DialUDP("udp4", laddr, &net.UDPAddr{IP: net.ParseIP("203.0.113.2"), Port: 7001})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
		})
	}
	marker := 0
	mark := func() {
		t.Helper()
		marker++
		msg := fmt.Sprint("marker-", marker)
		for range 20 {
			send("", msg)
			if sink.wait(msg) {
				return
			}
		}
		t.Fatal("the rental's own datagrams do not reach the internet host")
	}
	mark() // control

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
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}

	must(t, h.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet("198.18.0.9", 32)}))
	for range 3 {
		send("198.18.0.9", "forged-ip")
	}
	must(t, h.AddrDel(eth0, &netlink.Addr{IPNet: ipnet("198.18.0.9", 32)}))
	mark()

	orig := eth0.Attrs().HardwareAddr
	must(t, h.LinkSetHardwareAddr(eth0, net.HardwareAddr{0x02, 0x42, 0xde, 0xad, 0xbe, 0xef}))
	for range 3 {
		send("", "forged-mac")
	}
	must(t, h.LinkSetHardwareAddr(eth0, orig))
	mark()

	for _, msg := range []string{"forged-ip", "forged-mac"} {
		if n := sink.count(msg); n > 0 {
			t.Errorf("%d datagrams with a %s reached the internet host", n, strings.TrimPrefix(msg, "forged-"))
		}
	}
}

type sink struct {
	mu   sync.Mutex
	got  map[string]int
	news chan struct{}
}

// udpSink counts the datagrams received on addr in namespace path, by
// content, and never answers.
func udpSink(t *testing.T, path, addr string) *sink {
	t.Helper()
	var pc net.PacketConn
	testenv.InNetNS(t, path, func() {
		var err error
		if pc, err = net.ListenPacket("udp4", addr); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { pc.Close() })
	s := &sink{got: map[string]int{}, news: make(chan struct{}, 100)}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got[string(buf[:n])]++
			s.mu.Unlock()
			select {
			case s.news <- struct{}{}:
			default:
			}
		}
	}()
	return s
}

func (s *sink) count(msg string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[msg]
}

// wait says whether msg arrived within a short while.
func (s *sink) wait(msg string) bool {
	deadline := time.After(500 * time.Millisecond)
	for s.count(msg) == 0 {
		select {
		case <-s.news:
		case <-deadline:
			return s.count(msg) > 0
		}
	}
	return true
}
