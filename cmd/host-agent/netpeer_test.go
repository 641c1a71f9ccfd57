package main

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/dns/dnsmessage"
)

// serveDNS answers A queries for names on UDP port 53 in the namespace at
// path.
func serveDNS(t *testing.T, path string, names map[string]string) {
	t.Helper()
	var pc net.PacketConn
	testenv.InNetNS(t, path, func() {
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
