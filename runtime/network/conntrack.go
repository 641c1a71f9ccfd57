package network

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EgressPolicy is what the isolation rules let a rental reach, for cutting
// the connections they would have refused: those the kernel tracks from a
// time the rules were missing (a flush, a firewall reload) keep flowing
// through the rules' "replies are allowed" accept otherwise.
type EgressPolicy struct {
	// Subnet is the rentals'.
	Subnet netip.Prefix
	// Blocked are destinations rentals may not reach, Allowed exceptions
	// to them.
	Blocked, Allowed []netip.Prefix
	// DNS are resolvers rentals may reach on port 53, blocked or not.
	DNS []netip.Addr
}

// forbids says whether the rules refuse a rental's connection to dst on
// port dport: to a blocked range (but not an exception), to another rental,
// or to the host itself (local), except a resolver's port 53.
func (p *EgressPolicy) forbids(dst netip.Addr, dport uint16, local []netip.Addr) bool {
	if dport == 53 && slices.Contains(p.DNS, dst) {
		return false
	}
	if p.Subnet.Contains(dst) || slices.Contains(local, dst) || dst.IsLoopback() {
		return true
	}
	for _, a := range p.Allowed {
		if a.Contains(dst) {
			return false
		}
	}
	for _, b := range p.Blocked {
		if b.Contains(dst) {
			return true
		}
	}
	return false
}

// flowFilter matches the tracked connections a rental opened that the
// policy forbids.
type flowFilter struct {
	p     *EgressPolicy
	local []netip.Addr
}

func (f flowFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	src, ok1 := netip.AddrFromSlice(flow.Forward.SrcIP)
	dst, ok2 := netip.AddrFromSlice(flow.Forward.DstIP)
	if !ok1 || !ok2 {
		return false
	}
	src, dst = src.Unmap(), dst.Unmap()
	return f.p.Subnet.Contains(src) && f.p.forbids(dst, flow.Forward.DstPort, f.local)
}

// FlushForbidden deletes the kernel's tracking of every connection from a
// rental that the policy forbids, so that its next packet meets the rules
// as a new connection and is refused. It returns how many it deleted.
func (p *EgressPolicy) FlushForbidden() (int, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return 0, fmt.Errorf("list the host's addresses: %w", err)
	}
	var local []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			local = append(local, ip.Unmap())
		}
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, flowFilter{p: p, local: local})
	if err != nil {
		return int(n), fmt.Errorf("delete tracked connections: %w", err)
	}
	return int(n), nil
}

var _ netlink.CustomConntrackFilter = flowFilter{}
