package main

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

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
