package dockernet_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/network/dockernet"
)

func testConfig() dockernet.Config {
	return dockernet.Config{
		Bridge:        "hadock-t",
		Subnet:        netip.MustParsePrefix("198.51.100.0/24"),
		ChainPrefix:   "HAT",
		BlockedEgress: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		AllowedEgress: []netip.Prefix{netip.MustParsePrefix("10.1.2.3/32")},
		DNS:           []netip.Addr{netip.MustParseAddr("10.0.0.53")},
	}
}

// The rule set jumps first from DOCKER-USER and INPUT to the agent's two
// chains; forwarded traffic between rentals and spoofed traffic is dropped
// before anything returns to Docker's chains, the resolvers' port 53 (in a
// blocked range here) and the allowed exceptions come before the blocked
// ranges, and the host refuses what rentals open to it.
func TestRuleSet(t *testing.T) {
	t.Parallel()
	c := testConfig()
	set := c.RuleSet()
	if !slices.Equal(set.Jumps, []network.Jump{
		{Table: "filter", From: dockernet.UserChain, To: "HAT-DFWD"},
		{Table: "filter", From: "INPUT", To: "HAT-DIN"},
	}) {
		t.Fatalf("jumps %+v", set.Jumps)
	}
	if len(set.Chains) != 2 || set.Chains[0].Name != c.ForwardChain() || set.Chains[1].Name != c.InputChain() {
		t.Fatalf("chains %+v", set.Chains)
	}
	fwd := strings.Join(set.Chains[0].Rules, "\n")
	order := []string{"-i hadock-t -o hadock-t -j DROP", "! -s 198.51.100.0/24 -j DROP", "--ctstate RELATED,ESTABLISHED -j RETURN",
		"-d 10.0.0.53/32 -p udp --dport 53 -j RETURN", "-d 10.0.0.53/32 -p tcp --dport 53 -j RETURN",
		"-d 10.1.2.3/32 -j RETURN", "-d 10.0.0.0/8 -j REJECT"}
	last := -1
	for _, r := range order {
		i := strings.Index(fwd, r)
		if i <= last {
			t.Fatalf("forward chain, %q missing or out of order:\n%s", r, fwd)
		}
		last = i
	}
	in := set.Chains[1].Rules
	if len(in) != 2 || !strings.HasSuffix(in[1], "-i hadock-t -j REJECT --reject-with icmp-admin-prohibited") {
		t.Fatalf("input chain %q", in)
	}
	if _, err := dockernet.NewRules(c, nil); err != nil {
		t.Fatalf("the rules owner refuses the rule set: %v", err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	for name, change := range map[string]func(*dockernet.Config){
		"long bridge":       func(c *dockernet.Config) { c.Bridge = "a-bridge-name-too-long" },
		"no bridge":         func(c *dockernet.Config) { c.Bridge = "" },
		"IPv6 subnet":       func(c *dockernet.Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") },
		"lower prefix":      func(c *dockernet.Config) { c.ChainPrefix = "hat" },
		"IPv6 resolver":     func(c *dockernet.Config) { c.DNS = []netip.Addr{netip.MustParseAddr("fd00::53")} },
		"loopback resolver": func(c *dockernet.Config) { c.DNS = []netip.Addr{netip.MustParseAddr("127.0.0.53")} },
	} {
		c := testConfig()
		change(&c)
		if _, err := dockernet.New(c, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	n, err := dockernet.New(testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := n.Status(); st.Subnet != "198.51.100.0/24" || st.Bridge != "hadock-t" || !slices.Equal(st.DNS, []string{dockernet.EmbeddedDNS}) {
		t.Fatalf("status %+v", st)
	}
}
