package network

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RuleRepairsMetric counts the times the agent found its iptables rules
// changed behind its back and wrote them again.
const RuleRepairsMetric = "host_agent_network_rule_repairs_total"

// DefaultRecheckInterval is how often the agent compares its rules with
// the kernel's when nothing tells it of a change.
const DefaultRecheckInterval = 2 * time.Second

// Chain is one of the agent's own iptables chains, owned whole: its rules,
// in order, as "-A <Name> ..." lines.
type Chain struct {
	Table string
	Name  string
	Rules []string
}

// Jump is a jump to one of the agent's chains that must come first in a
// chain of someone else's (a built-in chain, Docker's DOCKER-USER).
type Jump struct {
	Table string
	From  string
	To    string
}

// RuleSet is everything the agent owns in iptables.
type RuleSet struct {
	Chains []Chain
	Jumps  []Jump
}

// RulesOptions configure a Rules.
type RulesOptions struct {
	// Name says whose rules they are in logs ("cni", "docker").
	Name string
	Set  RuleSet
	// Bridge is the interface the rules act on: another agent's jumps
	// first in the same chains, whose rules act on other interfaces only,
	// may stay above the rule set's own.
	Bridge string
	// Egress, when set, is the policy the rules enforce: after every
	// write, the connections it forbids that the kernel still tracks
	// (opened while the rules were missing) are cut.
	Egress *EgressPolicy
	// Lock, when set, is held around the checks and writes of Reconcile
	// (not of Ensure, whose caller holds it already).
	Lock   func(context.Context) (func(), error)
	Logger *slog.Logger
}

// Rules owns the agent's iptables rule set: it writes it (Ensure), compares
// it with what the kernel has (Diff), and once written keeps it, repairing
// whatever a flush, a firewall reload or another tool changed (Reconcile,
// Run). Its methods are safe for concurrent use.
type Rules struct {
	opts    RulesOptions
	repairs prometheus.Counter
	wake    chan struct{}

	mu    sync.Mutex // held across a comparison and the write it leads to
	armed bool       // written once: a difference from now on is a repair
}

var (
	ownChainRE   = regexp.MustCompile(`^[A-Z][A-Z0-9_-]{0,28}$`)
	otherChainRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,28}$`)
)

// NewRules checks the rule set's names: every chain and jump of the agent
// is named so that it can be told from anyone else's.
func NewRules(opts RulesOptions) (*Rules, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	own := map[string]bool{}
	for _, c := range opts.Set.Chains {
		if !ownChainRE.MatchString(c.Name) || (c.Table != "filter" && c.Table != "nat") {
			errs = append(errs, fmt.Errorf("chain %s %q: upper-case letters, digits, '_' and '-', at most 29, in filter or nat", c.Table, c.Name))
		}
		for _, r := range c.Rules {
			if !strings.HasPrefix(r, "-A "+c.Name+" ") || strings.ContainsAny(r, "\n\r") {
				errs = append(errs, fmt.Errorf("rule %q is not a rule of chain %s", r, c.Name))
			}
		}
		own[c.Table+" "+c.Name] = true
	}
	for _, j := range opts.Set.Jumps {
		if !own[j.Table+" "+j.To] {
			errs = append(errs, fmt.Errorf("jump from %s %s to %s, which is not one of the rule set's chains", j.Table, j.From, j.To))
		}
		if !otherChainRE.MatchString(j.From) {
			errs = append(errs, fmt.Errorf("chain %q", j.From))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Rules{
		opts: opts,
		repairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: RuleRepairsMetric,
			Help: "Times the agent found its iptables rules for rentals changed or missing and wrote them again.",
		}),
		wake: make(chan struct{}, 1),
	}, nil
}

// Expected is the rule set the agent keeps.
func (r *Rules) Expected() RuleSet { return r.opts.Set }

// Collector is the repairs counter, for GET /metrics.
func (r *Rules) Collector() prometheus.Collector { return r.repairs }

// Diff compares the expected rule set with the kernel's (iptables -S): each
// chain's rules, whole and in order, and each jump first in its chain,
// once. It returns what differs, empty when nothing does.
func (r *Rules) Diff(ctx context.Context) ([]string, error) {
	d, err := r.diff(ctx)
	if err != nil {
		return nil, err
	}
	return d.describe(), nil
}

// Check says how the kernel's rules differ from the agent's, for
// readiness: nil when they are the same. It waits for a repair under way,
// so that ready means the repair is over, connections cut included.
func (r *Rules) Check(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, err := r.Diff(ctx)
	if err != nil {
		return err
	}
	if len(d) > 0 {
		return fmt.Errorf("the agent's iptables rules differ from the kernel's: %s", strings.Join(d, "; "))
	}
	return nil
}

// Ensure writes whatever differs from the expected rule set, in one
// iptables-restore transaction per table, and keeps the rules from then on
// (Reconcile). It returns whether it wrote anything; a write after the
// first is counted and logged as a repair.
func (r *Rules) Ensure(ctx context.Context) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ensureLocked(ctx)
}

func (r *Rules) ensureLocked(ctx context.Context) (bool, error) {
	d, err := r.diff(ctx)
	if err != nil {
		return false, err
	}
	if d.empty() {
		r.armed = true
		return false, nil
	}
	for _, table := range d.tables() {
		if err := iptablesRestore(ctx, d.restoreInput(table)); err != nil {
			return false, err
		}
	}
	flushed, ferr := 0, error(nil)
	if r.opts.Egress != nil {
		flushed, ferr = r.opts.Egress.FlushForbidden()
	}
	if r.armed {
		r.repairs.Inc()
		r.opts.Logger.Warn("repaired the rentals' iptables rules, changed behind the agent's back",
			"network", r.opts.Name, "differences", d.describe(), "connections_cut", flushed)
	}
	if ferr != nil {
		r.opts.Logger.Error("cutting connections the rules forbid", "network", r.opts.Name, "error", ferr)
	}
	r.armed = true
	return true, nil
}

// Reconcile repairs the rules if they were written (Ensure) and have
// changed since; before the first Ensure, and after Remove, it does
// nothing. It returns whether it repaired anything.
func (r *Rules) Reconcile(ctx context.Context) (bool, error) {
	r.mu.Lock()
	armed := r.armed
	r.mu.Unlock()
	if !armed {
		return false, nil
	}
	// Compared first without Lock, which a CNI call in flight holds for
	// seconds: a repair is rare, a check every few seconds.
	if d, err := r.diff(ctx); err != nil {
		return false, err
	} else if d.empty() {
		return false, nil
	}
	if r.opts.Lock != nil {
		unlock, err := r.opts.Lock(ctx)
		if err != nil {
			return false, err
		}
		defer unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.armed {
		return false, nil
	}
	return r.ensureLocked(ctx)
}

// Trigger asks Run for a Reconcile now (a daemon's event said that it may
// have rewritten iptables).
func (r *Rules) Trigger() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run reconciles every interval and on each Trigger until ctx ends.
func (r *Rules) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultRecheckInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := r.Reconcile(cctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			r.opts.Logger.Error("checking the rentals' iptables rules", "network", r.opts.Name, "error", err)
			failing = true
		case err == nil && failing:
			r.opts.Logger.Info("the rentals' iptables rules are checked again", "network", r.opts.Name)
			failing = false
		}
	}
}

// Remove deletes the jumps and the chains, and stops keeping them: what an
// operator does by hand with the commands in the README.
func (r *Rules) Remove(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.armed = false
	var errs []error
	for _, table := range r.tables() {
		cur, err := listTable(ctx, table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var b bytes.Buffer
		fmt.Fprintf(&b, "*%s\n", table)
		any := false
		for _, from := range r.jumpSources(table) {
			var nums []int
			for i, l := range cur.rules[from] {
				for _, j := range r.opts.Set.Jumps {
					if j.Table == table && j.From == from && isJump(l, from, j.To) {
						nums = append(nums, i+1)
					}
				}
			}
			for _, n := range slices.Backward(nums) {
				fmt.Fprintf(&b, "-D %s %d\n", from, n)
				any = true
			}
		}
		for _, c := range r.opts.Set.Chains {
			if c.Table == table && cur.chains[c.Name] {
				fmt.Fprintf(&b, "-F %s\n-X %s\n", c.Name, c.Name)
				any = true
			}
		}
		b.WriteString("COMMIT\n")
		if any {
			if err := iptablesRestore(ctx, b.Bytes()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (r *Rules) tables() []string {
	var out []string
	for _, c := range r.opts.Set.Chains {
		if !slices.Contains(out, c.Table) {
			out = append(out, c.Table)
		}
	}
	return out
}

func (r *Rules) jumpSources(table string) []string {
	var out []string
	for _, j := range r.opts.Set.Jumps {
		if j.Table == table && !slices.Contains(out, j.From) {
			out = append(out, j.From)
		}
	}
	return out
}

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
