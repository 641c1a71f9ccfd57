package network

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// IFBPrefix starts the names of the ifb devices Shape makes.
const IFBPrefix = "habw"

// tbfLatencyMs is how long a packet may wait in a token bucket, as the
// CNI bandwidth plugin has it: it sizes the queue.
const tbfLatencyMs = 25

// IFBName is the ifb device carrying what instance id sends.
func IFBName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return IFBPrefix + hex.EncodeToString(sum[:])[:15-len(IFBPrefix)]
}

// HostVeth finds the host's end of the veth whose other end is ifName in
// the network namespace at nsPath (/proc/PID/ns/net).
func HostVeth(nsPath, ifName string) (netlink.Link, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer h.Close()
	inner, err := h.LinkByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", ifName, nsPath, err)
	}
	if _, ok := inner.(*netlink.Veth); !ok || inner.Attrs().ParentIndex == 0 {
		return nil, fmt.Errorf("%s in %s is not a veth", ifName, nsPath)
	}
	host, err := netlink.LinkByIndex(inner.Attrs().ParentIndex)
	if err != nil {
		return nil, fmt.Errorf("the host's end of %s in %s: %w", ifName, nsPath, err)
	}
	return host, nil
}

// Shape limits the traffic of the container behind the host's veth end
// host, as the CNI bandwidth plugin does: what it receives with a token
// bucket on the host end's egress, what it sends by redirecting the host
// end's ingress to an ifb device (ifbName, its alias owner, which
// SweepIFBs goes by) with a token bucket. It replaces whatever limits the
// link had, so it may be applied again.
func Shape(host netlink.Link, ifbName, owner string, b Bandwidth) error {
	idx := host.Attrs().Index
	var errs []error
	if b.IngressMbps > 0 {
		errs = append(errs, replaceTBF(idx, uint64(b.IngressMbps)*1_000_000))
	} else {
		errs = append(errs, deleteRoot(idx))
	}
	if b.EgressMbps > 0 {
		errs = append(errs, shapeEgress(host, ifbName, owner, uint64(b.EgressMbps)*1_000_000))
	} else {
		errs = append(errs, deleteIngress(idx), RemoveIFB(ifbName))
	}
	return errors.Join(errs...)
}

func shapeEgress(host netlink.Link, ifbName, owner string, rateBits uint64) error {
	ifb, err := netlink.LinkByName(ifbName)
	if err != nil {
		mtu := host.Attrs().MTU
		if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: ifbName, Flags: net.FlagUp, MTU: mtu}}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create ifb %s: %w", ifbName, err)
		}
		if ifb, err = netlink.LinkByName(ifbName); err != nil {
			return fmt.Errorf("ifb %s: %w", ifbName, err)
		}
	}
	if err := netlink.LinkSetAlias(ifb, owner); err != nil {
		return fmt.Errorf("name the owner of %s: %w", ifbName, err)
	}
	if err := netlink.LinkSetUp(ifb); err != nil {
		return fmt.Errorf("set %s up: %w", ifbName, err)
	}
	if err := replaceTBF(ifb.Attrs().Index, rateBits); err != nil {
		return err
	}
	idx := host.Attrs().Index
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
	if err := netlink.QdiscAdd(ingress); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("ingress qdisc on %s: %w", host.Attrs().Name, err)
	}
	filters, err := netlink.FilterList(host, ingress.Handle)
	if err != nil {
		return fmt.Errorf("filters on %s: %w", host.Attrs().Name, err)
	}
	for _, f := range filters {
		if err := netlink.FilterDel(f); err != nil {
			return fmt.Errorf("remove a filter of %s: %w", host.Attrs().Name, err)
		}
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: ingress.Handle, Priority: 1, Protocol: unix.ETH_P_ALL},
		ClassId:     netlink.MakeHandle(1, 1),
		RedirIndex:  ifb.Attrs().Index,
		Actions:     []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
	}
	if err := netlink.FilterAdd(filter); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", host.Attrs().Name, ifbName, err)
	}
	return nil
}

// replaceTBF puts a token bucket of rateBits bit/s at the root of link
// idx.
func replaceTBF(idx int, rateBits uint64) error {
	rate := rateBits / 8
	burst := BurstBits(rateBits) / 8
	q := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       rate,
		Buffer:     uint32(float64(burst) * float64(netlink.TIME_UNITS_PER_SEC) / float64(rate) * netlink.TickInUsec()),
		Limit:      uint32(float64(rate)*tbfLatencyMs/1000) + uint32(burst),
	}
	if err := netlink.QdiscReplace(q); err != nil {
		return fmt.Errorf("token bucket on link %d: %w", idx, err)
	}
	return nil
}

func deleteRoot(idx int) error {
	err := netlink.QdiscDel(&netlink.Tbf{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT}})
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("remove token bucket of link %d: %w", idx, err)
	}
	return nil
}

func deleteIngress(idx int) error {
	err := netlink.QdiscDel(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}})
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("remove ingress qdisc of link %d: %w", idx, err)
	}
	return nil
}

// Shaped reads back the limits on the host's veth end host (and its ifb
// device ifbName), in Mbit/s, rounded: what Shape applied, or what is left
// of it.
func Shaped(host netlink.Link, ifbName string) (Bandwidth, error) {
	var b Bandwidth
	var err error
	if b.IngressMbps, err = tbfMbps(host); err != nil {
		return Bandwidth{}, err
	}
	ifb, err := netlink.LinkByName(ifbName)
	if err != nil {
		return b, nil
	}
	filters, err := netlink.FilterList(host, netlink.MakeHandle(0xffff, 0))
	if err != nil {
		return b, nil
	}
	redirected := false
	for _, f := range filters {
		if u, ok := f.(*netlink.U32); ok {
			for _, a := range u.Actions {
				if m, ok := a.(*netlink.MirredAction); ok && m.Ifindex == ifb.Attrs().Index {
					redirected = true
				}
			}
		}
	}
	if redirected {
		if b.EgressMbps, err = tbfMbps(ifb); err != nil {
			return Bandwidth{}, err
		}
	}
	return b, nil
}

func tbfMbps(l netlink.Link) (int64, error) {
	qs, err := netlink.QdiscList(l)
	if err != nil {
		return 0, fmt.Errorf("qdiscs of %s: %w", l.Attrs().Name, err)
	}
	for _, q := range qs {
		if t, ok := q.(*netlink.Tbf); ok && t.Attrs().Parent == netlink.HANDLE_ROOT {
			return int64((t.Rate*8 + 500_000) / 1_000_000), nil
		}
	}
	return 0, nil
}

// RemoveIFB deletes the ifb device name, if it exists.
func RemoveIFB(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}

// SweepIFBs deletes every ifb device Shape made for an owner starting with
// ownerPrefix whose name keep does not hold: those of instances that are
// gone. Devices of other owners (another agent on the host) stay.
func SweepIFBs(ownerPrefix string, keep map[string]bool) error {
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, IFBPrefix) && l.Type() == "ifb" && !keep[n] &&
			ownerPrefix != "" && strings.HasPrefix(l.Attrs().Alias, ownerPrefix) {
			errs = append(errs, RemoveIFB(n))
		}
	}
	return errors.Join(errs...)
}

// InterfaceCounters reads the bytes interface ifName in the network
// namespace at nsPath received and sent, as the rental behind it counts
// them.
func InterfaceCounters(nsPath, ifName string) (rx, tx uint64, err error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return 0, 0, fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return 0, 0, fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifName)
	if err != nil {
		return 0, 0, fmt.Errorf("%s in %s: %w", ifName, nsPath, err)
	}
	st := l.Attrs().Statistics
	if st == nil {
		return 0, 0, fmt.Errorf("%s in %s: no statistics", ifName, nsPath)
	}
	return st.RxBytes, st.TxBytes, nil
}
