package network

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// IsolateBridgePorts turns port isolation on for every veth port of
// bridge that lacks it: rentals then reach nothing of each other at layer 2
// (ARP included), below any iptables rule. The containerd back end
// isolates each port as CNI ADD makes it (Setup); on Docker, whose daemon
// makes the ports, the back end calls this after each start.
func IsolateBridgePorts(bridge string) error {
	ports, err := unisolated(bridge)
	if err != nil {
		return err
	}
	for _, l := range ports {
		if err := netlink.LinkSetIsolated(l, true); err != nil {
			return fmt.Errorf("isolate bridge port %s of %s: %w", l.Attrs().Name, bridge, err)
		}
	}
	return nil
}

// UnisolatedPorts names the veth ports of bridge without port isolation.
func UnisolatedPorts(bridge string) ([]string, error) {
	ports, err := unisolated(bridge)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ports))
	for i, l := range ports {
		names[i] = l.Attrs().Name
	}
	return names, nil
}

func unisolated(bridge string) ([]netlink.Link, error) {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); !ok || l.Attrs().MasterIndex != br.Attrs().Index {
			continue
		}
		if pi, err := netlink.LinkGetProtinfo(l); err == nil && pi.Isolated {
			continue
		}
		out = append(out, l)
	}
	return out, nil
}
