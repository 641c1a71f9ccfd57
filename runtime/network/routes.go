package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// CheckSubnet refuses a rentals' subnet that overlaps a route of the host
// (in any routing table): tenants would shadow part of the provider's
// network, or the host would send their traffic elsewhere. The agent's own
// bridges (either back end's, named in bridges) may route the subnet and
// hold addresses in it; one that routes a wider prefix was left with an
// earlier RENTAL_SUBNET and is named as such.
func CheckSubnet(subnet netip.Prefix, bridges ...string) error {
	own := map[int]bool{}
	for _, b := range bridges {
		if l, err := netlink.LinkByName(b); err == nil {
			own[l.Attrs().Index] = true
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list the host's routes: %w", err)
	}
	subnet = subnet.Masked()
	gateway := subnet.Addr().Next()
	for _, r := range routes {
		dst, ok := routeDst(r)
		if !ok || dst.Bits() == 0 {
			continue // a default route overlaps everything
		}
		if !dst.Overlaps(subnet) || (own[r.LinkIndex] && within(dst, subnet)) {
			continue
		}
		if r.Table == unix.RT_TABLE_LOCAL && r.Type == unix.RTN_LOCAL && dst == netip.PrefixFrom(gateway, 32) {
			// The rentals' gateway, the host's own address on the
			// agent's bridges; it stays local on one taken down
			// (YieldBridge), and no rental is given it.
			continue
		}
		dev := ""
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			dev = " dev " + l.Attrs().Name
		}
		if own[r.LinkIndex] {
			return fmt.Errorf("rental subnet %s overlaps the host's route to %s%s, the agent's own bridge left with an earlier RENTAL_SUBNET: "+
				"remove that bridge (ip link del) once no rental uses it, or choose another RENTAL_SUBNET", subnet, dst, dev)
		}
		return fmt.Errorf("rental subnet %s overlaps the host's route to %s%s: choose another RENTAL_SUBNET", subnet, dst, dev)
	}
	return nil
}

// within reports whether p lies inside subnet: the subnet itself, or one
// of a bridge's own addresses in it (its local and broadcast routes).
func within(p, subnet netip.Prefix) bool {
	return p.Bits() >= subnet.Bits() && subnet.Contains(p.Addr())
}

func routeDst(r netlink.Route) (netip.Prefix, bool) {
	if r.Dst == nil {
		return netip.Prefix{}, false
	}
	ones, _ := r.Dst.Mask.Size()
	a, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

// YieldBridge takes down bridge, the agent's bridge of the back end not in
// use, when it routes exactly subnet and no port is attached to it (no
// rental is on it). Two routes to one prefix are not an error to the
// kernel, which follows the older: the idle bridge would take the replies
// meant for the rentals of the back end in use. Taking it down removes its
// route and keeps it, with its address, for its back end to bring up
// again (ReclaimBridge). It reports whether it took the bridge down; a
// bridge with ports, or routing anything else, is left as it is for
// CheckSubnet to judge.
func YieldBridge(bridge string, subnet netip.Prefix) (bool, error) {
	l, err := netlink.LinkByName(bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("look up bridge %s: %w", bridge, err)
	}
	if l.Type() != "bridge" || l.Attrs().Flags&net.FlagUp == 0 {
		return false, nil
	}
	routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("list the routes of %s: %w", bridge, err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool { dst, ok := routeDst(r); return ok && dst == subnet.Masked() }) {
		return false, nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return false, fmt.Errorf("list links: %w", err)
	}
	for _, p := range links {
		if p.Attrs().MasterIndex == l.Attrs().Index {
			return false, nil
		}
	}
	if err := netlink.LinkSetDown(l); err != nil {
		return false, fmt.Errorf("take down bridge %s: %w", bridge, err)
	}
	return true, nil
}

// ReclaimBridge brings up bridge, the agent's bridge of the back end in
// use, when it exists and is down (a YieldBridge of an agent that ran on
// the other back end since). It reports whether it did.
func ReclaimBridge(bridge string) (bool, error) {
	l, err := netlink.LinkByName(bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("look up bridge %s: %w", bridge, err)
	}
	if l.Type() != "bridge" || l.Attrs().Flags&net.FlagUp != 0 {
		return false, nil
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return false, fmt.Errorf("bring up bridge %s: %w", bridge, err)
	}
	return true, nil
}
