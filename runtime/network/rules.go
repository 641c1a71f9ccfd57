package network

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"

	"github.com/coreos/go-iptables/iptables"
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

func restoreInput(table string, chains, rules []string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%s\n", table)
	for _, c := range chains {
		// With --noflush, declaring a chain creates or flushes it.
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, r := range rules {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
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

// ensureRules writes the agent's chains and puts the jumps to them first in
// INPUT, FORWARD and POSTROUTING. Idempotent; run at start and before each
// setup, so that software that inserted its own jumps above ours since
// (Docker does at its start) does not get ahead of the isolation.
func (n *Network) ensureRules(ctx context.Context) error {
	if n.cfg.ReadOnlyRules {
		return n.CheckRules(ctx)
	}
	if !n.rulesWritten {
		if err := iptablesRestore(ctx, restoreInput("filter", []string{n.forwardChain(), n.inputChain()}, n.filterRules())); err != nil {
			return err
		}
		if err := iptablesRestore(ctx, restoreInput("nat", []string{n.postroutingChain()}, n.natRules())); err != nil {
			return err
		}
		n.rulesWritten = true
	}
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(5))
	if err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	for _, j := range []struct{ table, chain, target string }{
		{"filter", "FORWARD", n.forwardChain()},
		{"filter", "INPUT", n.inputChain()},
		{"nat", "POSTROUTING", n.postroutingChain()},
	} {
		if err := ensureFirstJump(ipt, j.table, j.chain, j.target); err != nil {
			if n.rulesWritten {
				// The chain was deleted by someone else since it was
				// written: write it again, once.
				n.rulesWritten = false
				return n.ensureRules(ctx)
			}
			return err
		}
	}
	return nil
}

func ensureFirstJump(ipt *iptables.IPTables, table, chain, target string) error {
	rules, err := ipt.List(table, chain)
	if err != nil {
		return fmt.Errorf("list %s %s: %w", table, chain, err)
	}
	want := fmt.Sprintf("-A %s -j %s", chain, target)
	// rules[0] is the policy line.
	if len(rules) > 1 && rules[1] == want {
		count := 0
		for _, r := range rules {
			if r == want {
				count++
			}
		}
		if count == 1 {
			return nil
		}
	}
	for {
		exists, err := ipt.Exists(table, chain, "-j", target)
		if err != nil {
			return fmt.Errorf("check jump %s %s -> %s: %w", table, chain, target, err)
		}
		if !exists {
			break
		}
		if err := ipt.Delete(table, chain, "-j", target); err != nil {
			return fmt.Errorf("delete jump %s %s -> %s: %w", table, chain, target, err)
		}
	}
	if err := ipt.Insert(table, chain, 1, "-j", target); err != nil {
		return fmt.Errorf("insert jump %s %s -> %s: %w", table, chain, target, err)
	}
	return nil
}

// CheckRules reads the agent's chains and says how they differ from what
// the configuration makes of them: a chain or a jump to it missing, a rule
// missing, or rules that the configuration has not. It writes nothing.
func (n *Network) CheckRules(ctx context.Context) error {
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(5))
	if err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	var errs []string
	for _, c := range []struct {
		table, from, chain string
		rules              []string
	}{
		{"filter", "FORWARD", n.forwardChain(), n.filterRules()},
		{"filter", "INPUT", n.inputChain(), n.filterRules()},
		{"nat", "POSTROUTING", n.postroutingChain(), n.natRules()},
	} {
		if ok, err := ipt.ChainExists(c.table, c.chain); err != nil || !ok {
			errs = append(errs, fmt.Sprintf("chain %s (%s) is missing", c.chain, c.table))
			continue
		}
		if ok, err := ipt.Exists(c.table, c.from, "-j", c.chain); err != nil || !ok {
			errs = append(errs, fmt.Sprintf("the jump from %s to %s is missing", c.from, c.chain))
		}
		want := 0
		for _, r := range c.rules {
			f := strings.Fields(r)
			if len(f) < 2 || f[0] != "-A" || f[1] != c.chain {
				continue
			}
			want++
			if ok, err := ipt.Exists(c.table, c.chain, f[2:]...); err != nil || !ok {
				errs = append(errs, fmt.Sprintf("%s lacks %q", c.chain, strings.Join(f[2:], " ")))
			}
		}
		have, err := ipt.List(c.table, c.chain)
		if err != nil {
			errs = append(errs, fmt.Sprintf("list %s: %v", c.chain, err))
			continue
		}
		if got := len(have) - 1; got != want { // have[0] declares the chain
			errs = append(errs, fmt.Sprintf("%s holds %d rules, the configuration %d", c.chain, got, want))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("the agent's rules are not as configured: %s", strings.Join(errs, "; "))
	}
	return nil
}

// RemoveRules deletes the agent's chains and the jumps to them: what an
// operator does by hand with the commands in the README. Rentals lose their
// isolation and outbound traffic until the rules are written again.
func (n *Network) RemoveRules(ctx context.Context) error {
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(5))
	if err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	n.rulesWritten = false
	var errs []string
	for _, j := range []struct{ table, chain, target string }{
		{"filter", "FORWARD", n.forwardChain()},
		{"filter", "INPUT", n.inputChain()},
		{"nat", "POSTROUTING", n.postroutingChain()},
	} {
		for {
			exists, err := ipt.Exists(j.table, j.chain, "-j", j.target)
			if err != nil || !exists {
				break
			}
			if err := ipt.Delete(j.table, j.chain, "-j", j.target); err != nil {
				errs = append(errs, err.Error())
				break
			}
		}
		if ok, _ := ipt.ChainExists(j.table, j.target); ok {
			if err := ipt.ClearAndDeleteChain(j.table, j.target); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove rules: %s", strings.Join(errs, "; "))
	}
	return nil
}
