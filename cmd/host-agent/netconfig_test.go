package main

import (
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/network"
)

func TestLoadNetConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	base := func(extra map[string]string) map[string]string {
		m := map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name    string
		env     map[string]string
		wantVar string
	}{
		{"defaults", base(nil), ""},
		{"subnet", base(map[string]string{"RENTAL_SUBNET": "172.30.0.0/20"}), ""},
		{"subnet v6", base(map[string]string{"RENTAL_SUBNET": "fd00::/64"}), "RENTAL_SUBNET"},
		{"subnet too small", base(map[string]string{"RENTAL_SUBNET": "10.1.1.0/30"}), "RENTAL_SUBNET"},
		{"subnet garbage", base(map[string]string{"RENTAL_SUBNET": "10.1.1.0"}), "RENTAL_SUBNET"},
		{"network name", base(map[string]string{"RENTAL_NETWORK_NAME": "second2"}), ""},
		{"network name too long", base(map[string]string{"RENTAL_NETWORK_NAME": "abcdefghi"}), "RENTAL_NETWORK_NAME"},
		{"network name upper case", base(map[string]string{"RENTAL_NETWORK_NAME": "Second"}), "RENTAL_NETWORK_NAME"},
		{"port range", base(map[string]string{"HOST_PORT_RANGE": "20000-20099"}), ""},
		{"port range reversed", base(map[string]string{"HOST_PORT_RANGE": "20099-20000"}), "HOST_PORT_RANGE"},
		{"port range with the agent's port", base(map[string]string{"HOST_PORT_RANGE": "8000-9000"}), "HOST_PORT_RANGE"},
		{"blocked", base(map[string]string{"BLOCKED_EGRESS_CIDRS": "10.0.0.0/8, 1.2.3.4"}), ""},
		{"blocked v6", base(map[string]string{"BLOCKED_EGRESS_CIDRS": "fc00::/7"}), "BLOCKED_EGRESS_CIDRS"},
		{"allowed", base(map[string]string{"ALLOWED_EGRESS_CIDRS": "10.1.2.0/24"}), ""},
		{"allowed garbage", base(map[string]string{"ALLOWED_EGRESS_CIDRS": "x"}), "ALLOWED_EGRESS_CIDRS"},
		{"allowed rentals", base(map[string]string{"ALLOWED_EGRESS_CIDRS": "10.213.5.0/24"}), "ALLOWED_EGRESS_CIDRS"},
		{"plugin dirs relative", base(map[string]string{"CNI_PLUGIN_DIRS": "/opt/cni/bin:cni"}), "CNI_PLUGIN_DIRS"},
		{"public ip", base(map[string]string{"PUBLIC_IP": "203.0.113.9"}), ""},
		{"public ip loopback", base(map[string]string{"PUBLIC_IP": "127.0.0.1"}), "PUBLIC_IP"},
		{"public ip garbage", base(map[string]string{"PUBLIC_IP": "host.example"}), "PUBLIC_IP"},
		{"dns", base(map[string]string{"RENTAL_DNS": "1.1.1.1,9.9.9.9"}), ""},
		{"dns stub", base(map[string]string{"RENTAL_DNS": "127.0.0.53"}), "RENTAL_DNS"},
		{"dns name", base(map[string]string{"RENTAL_DNS": "dns.example"}), "RENTAL_DNS"},
		{"recheck interval", base(map[string]string{"NETWORK_RECHECK_INTERVAL": "500ms"}), ""},
		{"recheck interval garbage", base(map[string]string{"NETWORK_RECHECK_INTERVAL": "2"}), "NETWORK_RECHECK_INTERVAL"},
		{"recheck interval too short", base(map[string]string{"NETWORK_RECHECK_INTERVAL": "1ms"}), "NETWORK_RECHECK_INTERVAL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := loadConfig(envOf(tc.env), filepath.Join(dir, "no.env"))
			if tc.wantVar == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if !c.Network.RentalSubnet.IsValid() || c.Network.HostPortRange.Size() == 0 {
					t.Fatalf("network config = %+v", c.Network)
				}
				return
			}
			var ce *configError
			if !errors.As(err, &ce) || ce.Var != tc.wantVar || !strings.Contains(err.Error(), tc.wantVar) {
				t.Fatalf("err = %v, want one naming %s", err, tc.wantVar)
			}
		})
	}
	c, err := loadConfig(envOf(base(nil)), filepath.Join(dir, "no.env"))
	if err != nil {
		t.Fatal(err)
	}
	n := c.Network
	if n.RentalSubnet != network.DefaultSubnet || n.HostPortRange != hostport.DefaultRange ||
		len(n.BlockedEgress) != len(network.DefaultBlockedEgress) || n.PublicIP.IsValid() || len(n.RentalDNS) != 0 {
		t.Fatalf("defaults = %+v", n)
	}
	if !n.BlockedEgress[4].Contains(netip.MustParseAddr("169.254.169.254")) {
		t.Fatalf("metadata address not blocked by default: %v", n.BlockedEgress)
	}
}

// Every name derived from RENTAL_NETWORK_NAME differs from the default
// network's, and the second network's namespaces do not sit under the
// default prefix, which the default agent's sweep would take for its own.
func TestNetworkConfigNames(t *testing.T) {
	t.Parallel()
	def := networkConfig(config{StateDir: "/s"})
	named := networkConfig(config{StateDir: "/s", Network: netConfig{Name: "abcd1234"}})
	if def.Bridge != network.DefaultBridge || def.NetworkName != network.DefaultNetworkName || def.ChainPrefix != network.DefaultChainPrefix ||
		def.NetNSPrefix != network.DefaultNetNSPrefix || def.DockerBridge != network.DefaultDockerBridge {
		t.Fatalf("default names changed: %+v", def)
	}
	// The Docker network takes the same names, but for its bridge.
	if d := dockerNetwork(config{StateDir: "/s", Network: netConfig{Name: "abcd1234"}}); d.Name != named.NetworkName ||
		d.ChainPrefix != named.ChainPrefix || d.Bridge != named.DockerBridge || d.Bridge == named.Bridge {
		t.Fatalf("names of the second network on Docker: %+v, CNI %+v", d, named)
	}
	if d := dockerNetwork(config{StateDir: "/s"}); d.Name != network.DefaultNetworkName || d.Bridge != network.DefaultDockerBridge ||
		d.ChainPrefix != network.DefaultChainPrefix {
		t.Fatalf("default names on Docker changed: %+v", d)
	}
	// RENTAL_DNS is what Docker's resolver forwards to, as it is what
	// the CNI network's resolv.conf names.
	dns := []netip.Addr{netip.MustParseAddr("10.0.0.53")}
	if d := dockerNetwork(config{StateDir: "/s", Network: netConfig{RentalDNS: dns}}); !slices.Equal(d.DNS, dns) {
		t.Fatalf("RENTAL_DNS on Docker: %v, want %v", d.DNS, dns)
	}
	if len(named.Bridge) > 15 || named.Bridge == def.Bridge || len(named.DockerBridge) > 15 || named.DockerBridge == def.DockerBridge || named.NetworkName == network.DefaultNetworkName ||
		named.ChainPrefix == network.DefaultChainPrefix || named.NetNSPrefix == network.DefaultNetNSPrefix ||
		strings.HasPrefix(named.NetNSPrefix, network.DefaultNetNSPrefix) {
		t.Fatalf("names of a second network: %+v", named)
	}
	// A second agent's journal and files apart from the first's, which
	// sweeps only its own.
	if def.StateDir != filepath.Join("/s", "network") || named.StateDir != filepath.Join("/s", "network", named.NetworkName) {
		t.Fatalf("state dirs %q and %q", def.StateDir, named.StateDir)
	}
}
