package dockernet

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/coreos/go-iptables/iptables"

	"github.com/host-agent/host-agent/runtime/network"
)

// UserChain is where Docker lets others filter forwarded traffic ahead of
// its own rules.
const UserChain = "DOCKER-USER"

// EmbeddedDNS is the resolver a container on a user-defined Docker network
// is given: dockerd's own, inside the container's namespace, which
// forwards to the host's resolvers.
const EmbeddedDNS = "127.0.0.11"

// Config is what the rules of the rentals' Docker network are made of.
type Config struct {
	// Bridge is the network's bridge device (at most 15 bytes).
	Bridge string
	// Subnet is its IPv4 subnet (RENTAL_SUBNET).
	Subnet netip.Prefix
	// ChainPrefix starts the names of the agent's iptables chains:
	// <prefix>-DFWD, jumped to from DOCKER-USER, and <prefix>-DIN, jumped
	// to from INPUT.
	ChainPrefix string
	// BlockedEgress are destinations tenants may not reach; AllowedEgress
	// are exceptions to them.
	BlockedEgress []netip.Prefix
	AllowedEgress []netip.Prefix
	// DNS are the resolvers Docker's embedded resolver forwards the
	// rentals' queries to (RENTAL_DNS), from each rental's namespace: they
	// are reached on port 53, blocked or not. Empty: the daemon's.
	DNS []netip.Addr
}

// Problems lists what is wrong with c, empty when nothing is.
func (c Config) Problems() []string {
	var problems []string
	if c.Bridge == "" || len(c.Bridge) > 15 || strings.ContainsAny(c.Bridge, "/ \t\n") {
		problems = append(problems, fmt.Sprintf("bridge name %q: 1 to 15 bytes, no slashes or spaces", c.Bridge))
	}
	if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() || c.Subnet.Bits() > 29 || c.Subnet.Bits() < 8 {
		problems = append(problems, fmt.Sprintf("subnet %s: want IPv4 between /8 and /29", c.Subnet))
	}
	if !network.ValidChainPrefix(c.ChainPrefix) {
		problems = append(problems, fmt.Sprintf("chain prefix %q", c.ChainPrefix))
	}
	for _, d := range c.DNS {
		if !d.Is4() || d.IsUnspecified() || d.IsLoopback() || d.IsMulticast() {
			problems = append(problems, fmt.Sprintf("resolver %s: want a unicast IPv4 address a rental can reach", d))
		}
	}
	return problems
}

// ForwardChain is the agent's chain for forwarded traffic, jumped to from
// DOCKER-USER.
func (c Config) ForwardChain() string { return c.ChainPrefix + "-DFWD" }

// InputChain is the agent's chain for traffic to the host, jumped to from
// INPUT.
func (c Config) InputChain() string { return c.ChainPrefix + "-DIN" }

// filterRules are the isolation rules of the rentals' bridge, in order.
// Forwarded (DOCKER-USER, ahead of Docker's own accepts): nothing between
// rentals, nothing spoofed, replies through, the resolvers' port 53 (what
// Docker's embedded resolver forwards from the rental's namespace), the
// allowed exceptions, then nothing to a blocked range; what is left returns to Docker's chains,
// which accept it and the published ports. Input: rentals reach no service
// of the host (Docker's embedded resolver answers inside each container's
// own namespace), only replies to what the host sent.
func (c Config) filterRules() []string {
	br, sub := c.Bridge, c.Subnet.Masked().String()
	fwd, in := c.ForwardChain(), c.InputChain()
	reject := "-j REJECT --reject-with icmp-admin-prohibited"
	r := []string{
		fmt.Sprintf("-A %s -i %s -o %s -j DROP", fwd, br, br),
		fmt.Sprintf("-A %s -i %s ! -s %s -j DROP", fwd, br, sub),
		fmt.Sprintf("-A %s -i %s -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN", fwd, br),
	}
	for _, d := range c.DNS {
		for _, proto := range []string{"udp", "tcp"} {
			r = append(r, fmt.Sprintf("-A %s -i %s -d %s/32 -p %s --dport 53 -j RETURN", fwd, br, d, proto))
		}
	}
	for _, a := range c.AllowedEgress {
		r = append(r, fmt.Sprintf("-A %s -i %s -d %s -j RETURN", fwd, br, a))
	}
	for _, b := range c.BlockedEgress {
		r = append(r, fmt.Sprintf("-A %s -i %s -d %s %s", fwd, br, b, reject))
	}
	r = append(r,
		fmt.Sprintf("-A %s -i %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", in, br),
		fmt.Sprintf("-A %s -i %s %s", in, br, reject),
	)
	return r
}

// RuleSet is the Docker network's rule set: its chains, jumped to from the
// top of DOCKER-USER and INPUT.
func (c Config) RuleSet() network.RuleSet {
	var fwd, in []string
	for _, r := range c.filterRules() {
		if strings.HasPrefix(r, "-A "+c.ForwardChain()+" ") {
			fwd = append(fwd, r)
		} else {
			in = append(in, r)
		}
	}
	return network.RuleSet{
		Chains: []network.Chain{
			{Table: "filter", Name: c.ForwardChain(), Rules: fwd},
			{Table: "filter", Name: c.InputChain(), Rules: in},
		},
		Jumps: []network.Jump{
			{Table: "filter", From: UserChain, To: c.ForwardChain()},
			{Table: "filter", From: "INPUT", To: c.InputChain()},
		},
	}
}

// NewRules is the owner of the network's rules; the connections it cuts
// after a repair are those the rules refuse.
func NewRules(c Config, logger *slog.Logger) (*network.Rules, error) {
	return network.NewRules(network.RulesOptions{
		Name:   "docker",
		Set:    c.RuleSet(),
		Bridge: c.Bridge,
		Egress: &network.EgressPolicy{Subnet: c.Subnet.Masked(), Blocked: c.BlockedEgress, Allowed: c.AllowedEgress, DNS: c.DNS},
		Logger: logger,
	})
}

// IsolationAvailable reports why rentals on Docker cannot be isolated by the
// agent's rules here: nil when the DOCKER-USER chain exists, which a dockerd
// managing iptables (the default) makes at its start.
func IsolationAvailable() error {
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(5))
	if err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	if ok, err := ipt.ChainExists("filter", UserChain); err != nil || !ok {
		return fmt.Errorf("chain %s is missing: dockerd must manage iptables (no --iptables=false) for rentals to be isolated: %w", UserChain, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// DisableBridgeIPv6 turns IPv6 off on the bridge: a link-local IPv6
// address on it would let rentals reach the host's services past every
// IPv4 rule. (A containerized agent's /proc/sys is read-only until made
// writable.) A bridge not there yet is no error.
func DisableBridgeIPv6(bridge string) error {
	if err := network.WritableProcSysNet(); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+bridge+"/disable_ipv6", []byte("1"), 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("turn IPv6 off on bridge %s: %w", bridge, err)
	}
	return nil
}
