package network

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// The agent's own chains. They are rewritten whole, atomically per table,
// with iptables-restore --noflush, and jumped to from the top of the
// built-in chains, so a restart with another configuration replaces them
// and other software's rules (Docker's, portmap's) are left alone.
func (n *Network) forwardChain() string     { return n.cfg.ChainPrefix + "-FORWARD" }
func (n *Network) inputChain() string       { return n.cfg.ChainPrefix + "-INPUT" }
func (n *Network) postroutingChain() string { return n.cfg.ChainPrefix + "-POSTROUTING" }

// filterRules are the isolation rules, in order. Traffic to tenants: replies,
// and published ports (DNAT), and nothing from another tenant. Traffic from
// tenants: not spoofed, the configured resolvers on port 53, the allowed
// exceptions, then nothing to a blocked range, the rest allowed.
func (n *Network) filterRules() []string {
	br, sub := n.cfg.Bridge, n.cfg.Subnet.String()
	fwd, in := n.forwardChain(), n.inputChain()
	reject := "-j REJECT --reject-with icmp-admin-prohibited"
	r := []string{
		fmt.Sprintf("-A %s -o %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", fwd, br),
		fmt.Sprintf("-A %s -i %s -o %s -j DROP", fwd, br, br),
		fmt.Sprintf("-A %s -o %s -m conntrack --ctstate DNAT -j ACCEPT", fwd, br),
		fmt.Sprintf("-A %s -o %s -j DROP", fwd, br),
		fmt.Sprintf("-A %s -i %s ! -s %s -j DROP", fwd, br, sub),
		fmt.Sprintf("-A %s -i %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", fwd, br),
	}
	for _, d := range n.dns {
		for _, proto := range []string{"udp", "tcp"} {
			r = append(r, fmt.Sprintf("-A %s -i %s -d %s/32 -p %s --dport 53 -j ACCEPT", fwd, br, d, proto))
		}
	}
	for _, a := range n.cfg.AllowedEgress {
		r = append(r, fmt.Sprintf("-A %s -i %s -d %s -j ACCEPT", fwd, br, a))
	}
	for _, b := range n.cfg.BlockedEgress {
		r = append(r, fmt.Sprintf("-A %s -i %s -d %s %s", fwd, br, b, reject))
	}
	r = append(r, fmt.Sprintf("-A %s -i %s -j ACCEPT", fwd, br))

	r = append(r, fmt.Sprintf("-A %s -i %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", in, br))
	for _, d := range n.dns {
		for _, proto := range []string{"udp", "tcp"} {
			r = append(r, fmt.Sprintf("-A %s -i %s -d %s/32 -p %s --dport 53 -j ACCEPT", in, br, d, proto))
		}
	}
	r = append(r, fmt.Sprintf("-A %s -i %s %s", in, br, reject))
	return r
}

// natRules masquerade what tenants send off the bridge. The bridge plugin's
// own ipMasq is off: it adds a chain per container that its DEL leaves
// behind when the namespace is already gone.
func (n *Network) natRules() []string {
	return []string{fmt.Sprintf("-A %s -s %s ! -o %s -j MASQUERADE", n.postroutingChain(), n.cfg.Subnet, n.cfg.Bridge)}
}

// ruleSet is the CNI network's rule set: its chains, jumped to from the
// top of INPUT, FORWARD and POSTROUTING.
func (n *Network) ruleSet() RuleSet {
	return RuleSet{
		Chains: []Chain{
			{Table: "filter", Name: n.forwardChain(), Rules: n.chainRules(n.forwardChain())},
			{Table: "filter", Name: n.inputChain(), Rules: n.chainRules(n.inputChain())},
			{Table: "nat", Name: n.postroutingChain(), Rules: n.natRules()},
		},
		Jumps: []Jump{
			{Table: "filter", From: "FORWARD", To: n.forwardChain()},
			{Table: "filter", From: "INPUT", To: n.inputChain()},
			{Table: "nat", From: "POSTROUTING", To: n.postroutingChain()},
		},
	}
}

// chainRules are filterRules' rules of one chain.
func (n *Network) chainRules(chain string) []string {
	var out []string
	for _, r := range n.filterRules() {
		if strings.HasPrefix(r, "-A "+chain+" ") {
			out = append(out, r)
		}
	}
	return out
}

func iptablesRestore(ctx context.Context, input []byte) error {
	cmd := exec.CommandContext(ctx, "iptables-restore", "-w", "5", "--noflush")
	cmd.Stdin = bytes.NewReader(input)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ensureRules writes what differs of the agent's chains and the jumps to
// them, first in INPUT, FORWARD and POSTROUTING. Run at start and before
// each setup, so that software that inserted its own jumps above ours
// since (Docker does at its start) does not get ahead of the isolation;
// Rules.Run keeps them in between.
func (n *Network) ensureRules(ctx context.Context) error {
	if n.cfg.ReadOnlyRules {
		return n.CheckRules(ctx)
	}
	_, err := n.rules.Ensure(ctx)
	return err
}

// rulesUnchanged says whether the agent's chains and jumps are as
// ensureRules writes them, by reading them only; false where they differ,
// cannot be read, or are this agent's to check only (ReadOnlyRules: the
// caller's ensureRules checks them and says how they differ). Where they
// are as written, they are kept from then on as after ensureRules.
func (n *Network) rulesUnchanged(ctx context.Context) bool {
	if n.cfg.ReadOnlyRules {
		return false
	}
	return n.rules.unchanged(ctx)
}

// Rules is the owner of the network's iptables rules: run its Run loop for
// as long as the agent serves.
func (n *Network) Rules() *Rules { return n.rules }

// CheckRules reads the agent's chains and says how they differ from what
// the configuration makes of them: a chain or a jump to it missing, a rule
// missing, or rules that the configuration has not. It writes nothing.
func (n *Network) CheckRules(ctx context.Context) error {
	diff, err := n.rules.Diff(ctx)
	if err != nil {
		return err
	}
	if len(diff) > 0 {
		return fmt.Errorf("the rentals' iptables rules differ from the agent's: %s", strings.Join(diff, "; "))
	}
	return nil
}

// RemoveRules deletes the agent's chains and the jumps to them: what an
// operator does by hand with the commands in the README. Rentals lose their
// isolation and outbound traffic until the rules are written again.
func (n *Network) RemoveRules(ctx context.Context) error {
	if err := n.rules.Remove(ctx); err != nil {
		return fmt.Errorf("remove rules: %w", err)
	}
	return nil
}
