package network

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// table is one table as iptables -S lists it.
type table struct {
	chains map[string]bool     // declared chains (-N) and built-in ones (-P)
	rules  map[string][]string // "-A" lines by chain, in order
}

func listTable(ctx context.Context, name string) (table, error) {
	out, err := exec.CommandContext(ctx, "iptables", "-w", "5", "-t", name, "-S").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return table{}, fmt.Errorf("iptables -t %s -S: %w", name, err)
	}
	t := table{chains: map[string]bool{}, rules: map[string][]string{}}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "-P", "-N":
			t.chains[f[1]] = true
		case "-A":
			t.rules[f[1]] = append(t.rules[f[1]], sc.Text())
		}
	}
	return t, sc.Err()
}

// agentChain names the chains of the agents on the host (another one's
// RENTAL_NETWORK_NAME gives it prefix HA<NAME>).
var agentChain = regexp.MustCompile(`^(HOSTAGENT|HA[A-Z0-9]{1,8})-(FORWARD|INPUT|POSTROUTING|DFWD|DIN)$`)

// isPeerJump says whether line jumps to another agent's chain, which each
// agent keeps first in the same built-in chains: one whose every rule is
// bound to an interface other than bridge acts on its own bridge only, so
// that the agents' jumps may sit above each other's without a fight.
func isPeerJump(line, from, bridge string, t table) bool {
	to, ok := strings.CutPrefix(line, "-A "+from+" -j ")
	if !ok || strings.Contains(to, " ") || !agentChain.MatchString(to) || bridge == "" {
		return false
	}
	for _, r := range t.rules[to] {
		f := strings.Fields(r)
		bound := false
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "-i" || f[i] == "-o" {
				if f[i+1] == bridge {
					return false
				}
				bound = true
			}
		}
		if !bound {
			return false
		}
	}
	return true
}

// diff is what Ensure has to write.
type diff struct {
	chains []Chain // to write whole
	// jumps to insert first, and the positions (1-based, before the
	// insertion) of the old ones to delete, by table and chain.
	jumps   []Jump
	deletes map[[2]string][]int
	why     []string
}

func (d *diff) empty() bool { return len(d.chains) == 0 && len(d.jumps) == 0 }

func (d *diff) describe() []string { return d.why }

func (d *diff) tables() []string {
	var out []string
	for _, c := range d.chains {
		if !slices.Contains(out, c.Table) {
			out = append(out, c.Table)
		}
	}
	for _, j := range d.jumps {
		if !slices.Contains(out, j.Table) {
			out = append(out, j.Table)
		}
	}
	return out
}

// restoreInput writes the table's part of the difference as one
// transaction: chains declared (with --noflush, created or flushed) and
// filled, then each jump inserted first before its old copies are deleted,
// so that at no point is the chain without it.
func (d *diff) restoreInput(table string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%s\n", table)
	for _, c := range d.chains {
		if c.Table == table {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
		}
	}
	for _, c := range d.chains {
		if c.Table == table {
			for _, r := range c.Rules {
				b.WriteString(r + "\n")
			}
		}
	}
	inserted := map[string]int{}
	// In reverse, so that the jumps of one chain end up in the set's order.
	for _, j := range slices.Backward(d.jumps) {
		if j.Table == table {
			fmt.Fprintf(&b, "-I %s 1 -j %s\n", j.From, j.To)
			inserted[j.From]++
		}
	}
	var froms []string
	for k := range d.deletes {
		if k[0] == table {
			froms = append(froms, k[1])
		}
	}
	sort.Strings(froms)
	for _, from := range froms {
		nums := slices.Clone(d.deletes[[2]string{table, from}])
		slices.Sort(nums)
		for _, n := range slices.Backward(nums) {
			fmt.Fprintf(&b, "-D %s %d\n", from, n+inserted[from])
		}
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

func (r *Rules) diff(ctx context.Context) (*diff, error) {
	d := &diff{deletes: map[[2]string][]int{}}
	tables := map[string]table{}
	for _, name := range append(r.tables(), r.jumpTables()...) {
		if _, ok := tables[name]; ok {
			continue
		}
		t, err := listTable(ctx, name)
		if err != nil {
			return nil, err
		}
		tables[name] = t
	}
	for _, c := range r.opts.Set.Chains {
		t := tables[c.Table]
		if !t.chains[c.Name] {
			d.chains = append(d.chains, c)
			d.why = append(d.why, fmt.Sprintf("chain %s %s is missing", c.Table, c.Name))
			continue
		}
		if why := compareChain(c, t.rules[c.Name]); why != "" {
			d.chains = append(d.chains, c)
			d.why = append(d.why, why)
		}
	}
	for _, from := range r.jumpSourcesAll() {
		t := tables[from[0]]
		var ours []Jump
		for _, j := range r.opts.Set.Jumps {
			if j.Table == from[0] && j.From == from[1] {
				ours = append(ours, j)
			}
		}
		if !t.chains[from[1]] {
			return nil, fmt.Errorf("chain %s %s does not exist", from[0], from[1])
		}
		rules := t.rules[from[1]]
		// Every jump of ours once, and above it only jumps of ours or
		// of another agent.
		ok := true
		var why []string
		for _, j := range ours {
			n, firstAt := 0, -1
			for i, l := range rules {
				if isJump(l, j.From, j.To) {
					n++
					if firstAt < 0 {
						firstAt = i
					}
				}
			}
			switch {
			case n == 0:
				ok = false
				why = append(why, fmt.Sprintf("the jump from %s %s to %s is missing", j.Table, j.From, j.To))
			case n > 1:
				ok = false
				why = append(why, fmt.Sprintf("the jump from %s %s to %s is there %d times", j.Table, j.From, j.To, n))
			default:
				for _, l := range rules[:firstAt] {
					if !isPeerJump(l, j.From, r.opts.Bridge, t) {
						ok = false
						why = append(why, fmt.Sprintf("the jump from %s %s to %s is not first: %q comes before it", j.Table, j.From, j.To, l))
						break
					}
				}
			}
		}
		if ok {
			continue
		}
		d.why = append(d.why, why...)
		d.jumps = append(d.jumps, ours...)
		for i, l := range rules {
			for _, j := range ours {
				if isJump(l, j.From, j.To) {
					d.deletes[from] = append(d.deletes[from], i+1)
				}
			}
		}
	}
	return d, nil
}

func (r *Rules) jumpTables() []string {
	var out []string
	for _, j := range r.opts.Set.Jumps {
		out = append(out, j.Table)
	}
	return out
}

func (r *Rules) jumpSourcesAll() [][2]string {
	var out [][2]string
	for _, j := range r.opts.Set.Jumps {
		k := [2]string{j.Table, j.From}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

func isJump(line, from, to string) bool { return line == "-A "+from+" -j "+to }

// compareChain says how a chain's rules differ from c's, "" when they do
// not.
func compareChain(c Chain, got []string) string {
	if len(got) != len(c.Rules) {
		return fmt.Sprintf("chain %s %s has %d rules, want %d", c.Table, c.Name, len(got), len(c.Rules))
	}
	for i := range got {
		if normalizeRule(got[i]) != normalizeRule(c.Rules[i]) {
			return fmt.Sprintf("rule %d of %s %s is %q, want %q", i+1, c.Table, c.Name, got[i], c.Rules[i])
		}
	}
	return ""
}

// normalizeRule puts a rule in a form that does not depend on how iptables
// prints it: its options sorted (iptables -S puts -s and -d before -i) and
// the match module implied by -p left out.
func normalizeRule(rule string) string {
	f := strings.Fields(rule)
	var kept []string
	proto := ""
	for i := 0; i < len(f); i++ {
		if f[i] == "-p" && i+1 < len(f) {
			proto = f[i+1]
		}
		if f[i] == "-m" && i+1 < len(f) && f[i+1] == proto {
			i++
			continue
		}
		kept = append(kept, f[i])
	}
	var groups []string
	var cur []string
	neg := false
	flush := func() {
		if len(cur) > 0 {
			groups = append(groups, strings.Join(cur, " "))
		}
		cur = nil
	}
	for _, t := range kept {
		switch {
		case t == "!":
			flush()
			neg = true
			continue
		case len(t) == 2 && t[0] == '-' && t[1] != '-':
			flush()
		}
		if neg {
			cur = append(cur, "!")
			neg = false
		}
		cur = append(cur, t)
	}
	flush()
	sort.Strings(groups)
	return strings.Join(groups, " | ")
}
