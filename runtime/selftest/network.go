package selftest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/network"
)

// DefaultEgressProbes are addresses on the internet a rental should reach
// (SELFTEST_EGRESS_PROBE): public resolvers' HTTPS ports, of which one
// answering is enough.
var DefaultEgressProbes = []netip.AddrPort{
	netip.MustParseAddrPort("1.1.1.1:443"),
	netip.MustParseAddrPort("8.8.8.8:443"),
}

// defaultProbeTimeout bounds each connection the network check makes.
const defaultProbeTimeout = 3 * time.Second

// NetworkOptions is what the rental network check needs.
type NetworkOptions struct {
	// Runtime starts the test rental on the network being checked.
	Runtime runtime.Runtime
	Image   string
	// Gateway is the rentals' bridge address: the host as a rental finds
	// it.
	Gateway netip.Addr
	// HostAddrs are the host's other addresses (HostAddrs finds them). A
	// rental reaches none of them, nor the gateway: the check listens on
	// all of them itself, so each answers the host.
	HostAddrs []netip.Addr
	// Blocked are further addresses a rental must not reach
	// (SELFTEST_BLOCKED_PROBE). Each is first dialled from the host: one
	// that does not answer the host proves nothing and is reported as not
	// verified.
	Blocked []netip.AddrPort
	// Egress are addresses of which a rental must reach at least one; none
	// leaves the internet unchecked.
	Egress []netip.AddrPort
	// ProbeTimeout bounds each connection; default 3s.
	ProbeTimeout time.Duration
	// NetNS finds a running rental's network namespace; nil: the path in
	// its labels (runtime.LabelNetNS), where the containerd back end
	// records it. An error wrapping ErrNamespaceHidden skips the check.
	NetNS func(inst runtime.Instance) (string, error)
}

// ErrNamespaceHidden says that this process cannot enter a rental's
// network namespace, so the network check cannot run here.
var ErrNamespaceHidden = errors.New("the rental's network namespace is not visible here")

// HostAddrs lists addrs (the host's interface addresses) a rental must not
// reach: IPv4, not loopback (a rental's loopback is its own) and not on
// the rentals' subnet (the gateway is probed on its own).
func HostAddrs(addrs []net.Addr, rentals netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := p.Addr().Unmap()
		if !ip.Is4() || ip.IsLoopback() || rentals.Contains(ip) {
			continue
		}
		out = append(out, ip)
	}
	return out
}

// NetworkCheck starts a test rental on the rentals' network and, from
// inside its network namespace, checks that it reaches the internet but not
// the host or the blocked addresses.
func NetworkCheck(o NetworkOptions) Check {
	return Check{Name: "rental-network", Run: func(ctx context.Context) Result {
		timeout := o.ProbeTimeout
		if timeout <= 0 {
			timeout = defaultProbeTimeout
		}
		dial := func(nsPath string, to netip.AddrPort) error {
			dctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			c, err := network.DialFrom(dctx, nsPath, to)
			if err == nil {
				c.Close()
			}
			return err
		}

		// The host, on every address, at a port of the check's own.
		ln, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			return fail("see the detail", "listen on the host: %v", err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		port := uint16(ln.Addr().(*net.TCPAddr).Port)
		forbidden := []netip.AddrPort{netip.AddrPortFrom(o.Gateway, port)}
		for _, a := range o.HostAddrs {
			forbidden = append(forbidden, netip.AddrPortFrom(a, port))
		}
		var unverified []string
		for _, b := range o.Blocked {
			if err := dial("", b); err != nil {
				unverified = append(unverified, fmt.Sprintf("%s (it does not answer the host either: %v)", b, err))
				continue
			}
			forbidden = append(forbidden, b)
		}

		fix := "see the detail: the test rental (SELFTEST_IMAGE) must start with a network (test-rental and cni-plugins above)"
		spec := runtime.InstanceSpec{Image: o.Image, Command: []string{"sleep", "120"}}
		id, stop, err := startTestRental(ctx, o.Runtime, spec)
		defer stop()
		if err != nil {
			return fail(fix, "start %s: %v", o.Image, err)
		}
		inst, err := waitTestRental(ctx, o.Runtime, id, runtime.StatusRunning)
		if err != nil {
			return fail(fix, "%v", err)
		}
		if inst.Status != runtime.StatusRunning {
			return fail(fix, "the test rental (%s) is %s, not running", strings.Join(spec.Command, " "), inst.Status)
		}
		ns := inst.AgentLabels[runtime.LabelNetNS]
		if o.NetNS != nil {
			if ns, err = o.NetNS(inst); errors.Is(err, ErrNamespaceHidden) {
				return skip("%v", err)
			} else if err != nil {
				return fail(fix, "the test rental's network namespace: %v", err)
			}
		}
		if ns == "" {
			return fail(fix, "the test rental %s has no network namespace", id)
		}

		var reached []string
		for _, to := range forbidden {
			if err := dial(ns, to); err == nil {
				reached = append(reached, to.String())
			}
		}
		if len(reached) > 0 {
			return fail("make sure BLOCKED_EGRESS_CIDRS covers these addresses and that no firewall rule ahead of the agent's chains (iptables -S FORWARD, iptables -S INPUT) accepts the rentals' traffic",
				"a rental reached %s, which it must not", strings.Join(reached, ", "))
		}
		detail := fmt.Sprintf("a rental reached none of %d host or blocked address(es)", len(forbidden))
		if len(o.Egress) == 0 {
			detail += "; the internet was not checked (SELFTEST_EGRESS_PROBE=none)"
		} else {
			var errs []string
			reachedInet := ""
			for _, to := range o.Egress {
				err := dial(ns, to)
				if err == nil {
					reachedInet = to.String()
					break
				}
				errs = append(errs, fmt.Sprintf("%s: %v", to, err))
			}
			if reachedInet == "" {
				return fail("check that the host itself reaches the internet, that net.ipv4.ip_forward is 1, and that no other firewall (ufw, firewalld, Docker's FORWARD policy) drops forwarded traffic; on a host without internet set SELFTEST_EGRESS_PROBE to an address rentals may reach, or to none",
					"a rental reached no internet address: %s", strings.Join(errs, "; "))
			}
			detail = fmt.Sprintf("a rental reached %s and none of %d host or blocked address(es)", reachedInet, len(forbidden))
		}
		if len(unverified) > 0 {
			return warn("give SELFTEST_BLOCKED_PROBE addresses that answer the host", "%s; not verified: %s", detail, strings.Join(unverified, ", "))
		}
		return ok("%s", detail)
	}}
}
