package network_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/host-agent/host-agent/runtime/network"
)

// Every name of a second agent's network, on both back ends, differs
// from the default network's and fits the kernel's limits; its namespaces
// are not under the default prefix and its files not in the default
// state directory, which the default agent's sweep takes for its own.
func TestConfigNamed(t *testing.T) {
	t.Parallel()
	def := network.Config{StateDir: "/s/network"}.Named("")
	if def.NetworkName != network.DefaultNetworkName || def.Bridge != network.DefaultBridge || def.DockerBridge != network.DefaultDockerBridge ||
		def.ChainPrefix != network.DefaultChainPrefix || def.NetNSPrefix != network.DefaultNetNSPrefix || def.StateDir != "/s/network" {
		t.Fatalf("default names: %+v", def)
	}
	named := network.Config{StateDir: "/s/network"}.Named("abcd1234")
	if named.NetworkName == def.NetworkName || named.Bridge == def.Bridge || named.DockerBridge == def.DockerBridge ||
		named.Bridge == named.DockerBridge || named.ChainPrefix == def.ChainPrefix ||
		strings.HasPrefix(named.NetNSPrefix, def.NetNSPrefix) || named.StateDir != filepath.Join("/s/network", named.NetworkName) {
		t.Fatalf("names of a second network: %+v", named)
	}
	for _, br := range []string{named.Bridge, named.DockerBridge} {
		if len(br) > 15 {
			t.Errorf("bridge %q is longer than 15 bytes", br)
		}
	}
	if !network.ValidChainPrefix(named.ChainPrefix) {
		t.Errorf("chain prefix %q", named.ChainPrefix)
	}
}

func TestParseCIDRs(t *testing.T) {
	t.Parallel()
	got, err := network.ParseCIDRs(" 10.0.0.0/8, 1.2.3.4 ,192.168.1.7/16,")
	if err != nil || len(got) != 3 || got[1] != netip.MustParsePrefix("1.2.3.4/32") || got[2] != netip.MustParsePrefix("192.168.0.0/16") {
		t.Fatalf("ParseCIDRs = %v, %v", got, err)
	}
	if got, err := network.ParseCIDRs(""); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("empty: %v, %v (want an empty, non-nil list: block nothing)", got, err)
	}
	for _, bad := range []string{"10.0.0.0/33", "::/0", "x"} {
		if _, err := network.ParseCIDRs(bad); err == nil {
			t.Errorf("ParseCIDRs(%q) accepted", bad)
		}
	}
	if _, err := network.ParseAddrs("1.1.1.1,::1"); err == nil {
		t.Error("ParseAddrs took an IPv6 address")
	}
}

func TestFindPlugins(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, p := range []string{"bridge", "loopback"} {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	err := network.FindPlugins([]string{dir})
	if err == nil || !strings.Contains(err.Error(), "host-local") || !strings.Contains(err.Error(), "portmap") || strings.Contains(err.Error(), "bridge,") {
		t.Fatalf("FindPlugins = %v; want host-local and portmap named missing", err)
	}
}

// A subnet overlapping one of the host's routes is refused, naming the
// route; the default route does not count.
func TestCheckSubnetRefusesOverlap(t *testing.T) {
	t.Parallel()
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	tested := false
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if ones == 0 || ones > 29 {
			continue
		}
		a, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		p := netip.PrefixFrom(a, ones)
		err := network.CheckSubnet(p, "no-such-bridge")
		if err == nil || !strings.Contains(err.Error(), "RENTAL_SUBNET") || !strings.Contains(err.Error(), p.Masked().String()) {
			t.Errorf("CheckSubnet(%s) = %v; want a refusal naming the route and RENTAL_SUBNET", p, err)
		}
		tested = true
	}
	if !tested {
		t.Skip("the host has no non-default IPv4 route to overlap")
	}
	// 198.18.0.0/15 is for benchmarking: no test host routes it.
	if err := network.CheckSubnet(netip.MustParsePrefix("198.18.0.0/24"), "no-such-bridge"); err != nil {
		t.Errorf("CheckSubnet on an unrouted subnet: %v", err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  network.Config
		want string
	}{
		{"v6 subnet", network.Config{StateDir: "/tmp/x", Subnet: netip.MustParsePrefix("fd00::/64")}, "IPv4"},
		{"relative state", network.Config{StateDir: "x"}, "absolute"},
		{"long bridge", network.Config{StateDir: "/tmp/x", Bridge: "a-bridge-name-too-long"}, "15 bytes"},
		{"chain prefix", network.Config{StateDir: "/tmp/x", ChainPrefix: "lower"}, "chain prefix"},
		{"no plugins", network.Config{StateDir: "/tmp/x", PluginDirs: []string{"/nonexistent"}}, "not found"},
	} {
		_, err := network.New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v, want an error mentioning %q", tc.name, err, tc.want)
		}
	}
}

func TestHostnameFitsALabel(t *testing.T) {
	t.Parallel()
	if h := network.Hostname(strings.Repeat("a", 62) + "-b"); h != strings.Repeat("a", 62) {
		t.Fatalf("Hostname = %q", h)
	}
	if h := network.Hostname("web-1"); h != "web-1" {
		t.Fatalf("Hostname = %q", h)
	}
}
