package main

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/network"
)

// netConfig is the rentals' network configuration.
type netConfig struct {
	// RentalSubnet is the rentals' bridge network (RENTAL_SUBNET).
	RentalSubnet netip.Prefix
	// HostPortRange is where published ports are taken from
	// (HOST_PORT_RANGE).
	HostPortRange hostport.Range
	// BlockedEgress and AllowedEgress are BLOCKED_EGRESS_CIDRS and its
	// exceptions, ALLOWED_EGRESS_CIDRS.
	BlockedEgress []netip.Prefix
	AllowedEgress []netip.Prefix
	// CNIPluginDirs are searched for the CNI plugins (CNI_PLUGIN_DIRS).
	CNIPluginDirs []string
	// PublicIP is the host's public address, announced to tenants
	// (PUBLIC_IP); invalid when unset.
	PublicIP netip.Addr
	// RentalDNS are the rentals' resolvers (RENTAL_DNS); empty means the
	// host's upstream resolvers.
	RentalDNS []netip.Addr
	// Name tells this agent's network apart from another agent's on the
	// same host (RENTAL_NETWORK_NAME); empty: the default names.
	Name string
	// RecheckInterval is how often the agent compares its iptables rules
	// with the kernel's and repairs them (NETWORK_RECHECK_INTERVAL).
	RecheckInterval time.Duration
}

// networkNameRE keeps every name derived from RENTAL_NETWORK_NAME within
// the kernel's and iptables' limits (a bridge name has 15 bytes).
var networkNameRE = regexp.MustCompile(`^[a-z0-9]{0,8}$`)

func loadNetConfig(get func(name, def string) string, listenAddr string) (netConfig, error) {
	var c netConfig
	c.Name = get("RENTAL_NETWORK_NAME", "")
	if !networkNameRE.MatchString(c.Name) {
		return c, &configError{"RENTAL_NETWORK_NAME", fmt.Sprintf("want 1 to 8 lower-case letters or digits, got %q", c.Name)}
	}
	s := get("RENTAL_SUBNET", network.DefaultSubnet.String())
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 29 {
		return c, &configError{"RENTAL_SUBNET", fmt.Sprintf("want an IPv4 CIDR between /8 and /29 such as %s, got %q", network.DefaultSubnet, s)}
	}
	c.RentalSubnet = p.Masked()

	if c.HostPortRange, err = hostport.ParseRange(get("HOST_PORT_RANGE", hostport.DefaultRange.String())); err != nil {
		return c, &configError{"HOST_PORT_RANGE", err.Error()}
	}
	if _, port, err := net.SplitHostPort(listenAddr); err == nil {
		if n, err := strconv.Atoi(port); err == nil && n > 0 && n <= 65535 && c.HostPortRange.Contains(uint16(n)) {
			return c, &configError{"HOST_PORT_RANGE", fmt.Sprintf("%s contains the agent's own port %d (LISTEN_ADDR)", c.HostPortRange, n)}
		}
	}

	def := make([]string, len(network.DefaultBlockedEgress))
	for i, b := range network.DefaultBlockedEgress {
		def[i] = b.String()
	}
	if c.BlockedEgress, err = network.ParseCIDRs(get("BLOCKED_EGRESS_CIDRS", strings.Join(def, ","))); err != nil {
		return c, &configError{"BLOCKED_EGRESS_CIDRS", "want comma-separated IPv4 CIDRs: " + err.Error()}
	}
	if c.AllowedEgress, err = network.ParseCIDRs(get("ALLOWED_EGRESS_CIDRS", "")); err != nil {
		return c, &configError{"ALLOWED_EGRESS_CIDRS", "want comma-separated IPv4 CIDRs: " + err.Error()}
	}
	for _, a := range c.AllowedEgress {
		if a.Overlaps(c.RentalSubnet) {
			return c, &configError{"ALLOWED_EGRESS_CIDRS", fmt.Sprintf("%s overlaps RENTAL_SUBNET %s: rentals may never reach each other", a, c.RentalSubnet)}
		}
	}

	c.CNIPluginDirs = filepath.SplitList(get("CNI_PLUGIN_DIRS", strings.Join(network.DefaultPluginDirs, ":")))
	for _, d := range c.CNIPluginDirs {
		if !filepath.IsAbs(d) {
			return c, &configError{"CNI_PLUGIN_DIRS", fmt.Sprintf("want absolute directories separated by ':', got %q", d)}
		}
	}

	if s := get("PUBLIC_IP", ""); s != "" {
		a, err := netip.ParseAddr(s)
		if err != nil || a.IsLoopback() || a.IsUnspecified() || a.Zone() != "" {
			return c, &configError{"PUBLIC_IP", fmt.Sprintf("want the host's public IP address, got %q", s)}
		}
		c.PublicIP = a
	}

	ri := get("NETWORK_RECHECK_INTERVAL", network.DefaultRecheckInterval.String())
	if c.RecheckInterval, err = time.ParseDuration(ri); err != nil || c.RecheckInterval < 100*time.Millisecond || c.RecheckInterval > 10*time.Minute {
		return c, &configError{"NETWORK_RECHECK_INTERVAL", fmt.Sprintf("want a duration between 100ms and 10m such as 2s, got %q", ri)}
	}

	if c.RentalDNS, err = network.ParseAddrs(get("RENTAL_DNS", "")); err != nil {
		return c, &configError{"RENTAL_DNS", "want comma-separated IPv4 addresses: " + err.Error()}
	}
	for _, a := range c.RentalDNS {
		if a.IsLoopback() || a.IsUnspecified() || c.RentalSubnet.Contains(a) {
			return c, &configError{"RENTAL_DNS", fmt.Sprintf("%s cannot be reached from a rental", a)}
		}
	}
	return c, nil
}
