package network

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// CheckSubnet refuses a rentals' subnet that overlaps a route of the host
// (in any routing table) other than the agent's own bridges': tenants would
// shadow part of the provider's network, or the host would send their
// traffic elsewhere.
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
	for _, r := range routes {
		if r.Dst == nil || own[r.LinkIndex] {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if ones == 0 {
			continue // a default route overlaps everything
		}
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		dst := netip.PrefixFrom(a.Unmap(), ones).Masked()
		if dst.Overlaps(subnet) {
			dev := ""
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				dev = " dev " + l.Attrs().Name
			}
			return fmt.Errorf("rental subnet %s overlaps the host's route to %s%s: choose another RENTAL_SUBNET", subnet, dst, dev)
		}
	}
	return nil
}
