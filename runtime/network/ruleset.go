package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
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

// unchanged compares the expected rule set with the kernel's without
// writing, as Ensure would before writing: true when nothing differs, and
// the rules are kept (Reconcile) from then on. A concurrent Ensure or
// Reconcile is waited for.
func (r *Rules) unchanged(ctx context.Context) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, err := r.diff(ctx)
	if err != nil || !d.empty() {
		return false
	}
	r.armed = true
	return true
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
