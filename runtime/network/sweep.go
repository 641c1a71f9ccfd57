package network

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// cleanupTimeout bounds a teardown run after the caller's context is gone.
const cleanupTimeout = time.Minute

// SweepResult says what Sweep removed, by instance ID.
type SweepResult struct {
	// TornDown are instances whose network was torn down: no live
	// instance, but a journal entry, namespace, lease or portmap rule.
	TornDown []string
}

// Sweep tears down the network of every instance live does not know: a
// crash between Setup and the container's creation, or between the
// container's removal and Teardown. It finds them in the journal, the
// namespaces under NetNSDir with the agent's prefix, host-local's leases and
// portmap's rules for the agent's network. Run it at the agent's start after
// Init, with live answering from the containers that exist.
func (n *Network) Sweep(ctx context.Context, live func(id string) bool) (SweepResult, error) {
	unlock, err := n.lock(ctx)
	if err != nil {
		return SweepResult{}, err
	}
	defer unlock()
	found := map[string]bool{}
	ids, err := n.journalIDs()
	if err != nil {
		return SweepResult{}, err
	}
	for _, id := range ids {
		found[id] = true
	}
	if ents, err := os.ReadDir(n.cfg.NetNSDir); err == nil {
		for _, e := range ents {
			if id, ok := strings.CutPrefix(e.Name(), n.cfg.NetNSPrefix); ok && id != "" {
				found[id] = true
			}
		}
	}
	// Files Prepare wrote for a container that was never created.
	if ents, err := os.ReadDir(filepath.Join(n.cfg.StateDir, "files")); err == nil {
		for _, e := range ents {
			found[e.Name()] = true
		}
	}
	leases, err := n.leases()
	if err != nil {
		return SweepResult{}, err
	}
	for _, id := range leases {
		found[id] = true
	}
	rules, err := n.portmapRuleIDs(ctx)
	if err != nil {
		return SweepResult{}, err
	}
	for id := range rules {
		found[id] = true
	}
	var res SweepResult
	var errs []error
	for id := range found {
		if live(id) {
			continue
		}
		if err := checkID(id); err != nil {
			continue
		}
		if err := n.teardownLocked(ctx, id, nil); err != nil {
			errs = append(errs, fmt.Errorf("instance %s: %w", id, err))
			continue
		}
		res.TornDown = append(res.TornDown, id)
	}
	return res, errors.Join(errs...)
}

// leases maps each of host-local's lease files for the agent's network to
// the container ID it is held for.
func (n *Network) leases() (map[string]string, error) {
	dir := filepath.Join(n.cfg.IPAMDataDir, n.cfg.NetworkName)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err != nil {
			continue // last_reserved_ip.0, lock
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		// "ID\r\nIFNAME" since plugins 0.9, "ID" before.
		id, _, _ := strings.Cut(string(b), "\n")
		out[filepath.Join(dir, e.Name())] = strings.TrimSpace(id)
	}
	return out, nil
}

// removeLeases deletes the lease files held for ids, which a DEL that
// failed or never ran left.
func (n *Network) removeLeases(ids map[string]bool) error {
	leases, err := n.leases()
	if err != nil {
		return err
	}
	for path, id := range leases {
		if ids[id] {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// portmap marks each of its rules with a comment naming the network and
// the container ID.
var portmapComment = regexp.MustCompile(`--comment "dnat name: \\"([^"\\]*)\\" id: \\"([^"\\]*)\\""`)
var portmapChain = regexp.MustCompile(`^-A (\S+) `)
var portmapTarget = regexp.MustCompile(` -j (CNI-DN-[0-9a-f]+)\b`)

type portmapRule struct {
	line  string // as iptables-save prints it
	chain string
}

func (n *Network) portmapRuleIDs(ctx context.Context) (map[string][]portmapRule, error) {
	out, err := exec.CommandContext(ctx, "iptables-save", "-t", "nat").Output()
	if err != nil {
		return nil, fmt.Errorf("iptables-save: %w", err)
	}
	rules := map[string][]portmapRule{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m := portmapComment.FindStringSubmatch(line)
		if m == nil || m[1] != n.cfg.NetworkName {
			continue
		}
		c := portmapChain.FindStringSubmatch(line)
		if c == nil {
			continue
		}
		rules[m[2]] = append(rules[m[2]], portmapRule{line: line, chain: c[1]})
	}
	return rules, sc.Err()
}

// removePortmapRules deletes portmap's rules and per-container chains for
// ids: what its DEL leaves when it is not given the ADD's port mappings.
func (n *Network) removePortmapRules(ctx context.Context, ids map[string]bool) error {
	all, err := n.portmapRuleIDs(ctx)
	if err != nil {
		return err
	}
	var b strings.Builder
	chains := map[string]bool{}
	for id, rules := range all {
		if !ids[id] {
			continue
		}
		for _, r := range rules {
			if strings.HasPrefix(r.chain, "CNI-DN-") {
				chains[r.chain] = true
			}
			// The per-container chain's own rules carry no comment in
			// every plugin version: find it from the jump to it.
			if m := portmapTarget.FindStringSubmatch(r.line); m != nil {
				chains[m[1]] = true
			}
		}
	}
	any := false
	b.WriteString("*nat\n")
	for id, rules := range all {
		if !ids[id] {
			continue
		}
		for _, r := range rules {
			if chains[r.chain] {
				continue
			}
			b.WriteString("-D" + strings.TrimPrefix(r.line, "-A") + "\n")
			any = true
		}
	}
	for c := range chains {
		fmt.Fprintf(&b, "-F %s\n-X %s\n", c, c)
		any = true
	}
	b.WriteString("COMMIT\n")
	if !any {
		return nil
	}
	return iptablesRestore(ctx, []byte(b.String()))
}
