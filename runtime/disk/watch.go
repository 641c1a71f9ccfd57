package disk

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

// DefaultWatchInterval is how often the Watcher measures the rentals'
// writable layers (DISK_WATCH_INTERVAL).
const DefaultWatchInterval = 10 * time.Second

// Lister lists the rentals (the Lifecycle).
type Lister interface {
	List(ctx context.Context) ([]runtime.Instance, error)
}

// Watcher enforces disk limits where no file system quota does: every
// Interval it measures each running rental's writable layer and stops
// (runtime.ExitReasonDiskLimit) a rental whose usage is over its limit
// (runtime.LabelDiskLimitBytes). It also keeps the host above its reserve:
// when free space at Path, less what the rentals wrote during the last
// interval, would fall below ReserveBytes, the rentals that wrote most in it are
// stopped, until what is left of that growth keeps the host above it.
type Watcher struct {
	Instances Lister
	Meter     runtime.DiskMeter
	Stopper   runtime.ReasonStopper
	Interval  time.Duration
	// Path, ReserveBytes and Free describe the host's disk as Limits
	// does; ReserveBytes zero: the host's free space is not watched.
	Path         string
	ReserveBytes uint64
	Free         func(path string) (uint64, error)
	Logger       *slog.Logger
	// Measured, when set, is told each pass's usage of the running
	// rentals (writable layers by ID; Limits.Observe takes it, so that
	// starts need not measure them again).
	Measured func(ctx context.Context, used map[string]uint64)

	mu   sync.Mutex
	last map[string]uint64 // usage at the previous check, by instance
}

// Run checks every Interval (default DefaultWatchInterval) until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	every := w.Interval
	if every <= 0 {
		every = DefaultWatchInterval
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cctx, cancel := context.WithTimeout(ctx, max(every, 30*time.Second))
		w.Check(cctx)
		cancel()
	}
}

func (w *Watcher) log() *slog.Logger {
	if w.Logger == nil {
		return slog.Default()
	}
	return w.Logger
}

// measured is one running rental's usage.
type measured struct {
	id          string
	used, limit uint64
	grown       uint64
}

// Check measures once and stops the rentals it must; it returns their IDs.
func (w *Watcher) Check(ctx context.Context) []string {
	list, err := w.Instances.List(ctx)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			w.log().Warn("disk watch: list rentals", "error", err)
		}
		return nil
	}
	w.mu.Lock()
	prev := w.last
	w.mu.Unlock()
	now := map[string]uint64{}
	var running []measured
	for _, inst := range list {
		if inst.Status != runtime.StatusRunning {
			continue
		}
		used, err := w.Meter.DiskUsed(ctx, inst.ID)
		if err != nil {
			w.log().Debug("disk watch: measure writable layer", "instance_id", inst.ID, "error", err)
			continue
		}
		now[inst.ID] = used
		m := measured{id: inst.ID, used: used, limit: inst.DiskLimit()}
		if p, ok := prev[inst.ID]; ok && used > p {
			m.grown = used - p
		}
		running = append(running, m)
	}
	w.mu.Lock()
	w.last = now
	w.mu.Unlock()
	if w.Measured != nil {
		w.Measured(ctx, now)
	}

	var stopped []string
	stop := func(m measured, why string) {
		w.log().Warn("stopping a rental: "+why, "instance_id", m.id, "used_bytes", m.used, "limit_bytes", m.limit)
		if err := w.Stopper.StopWithReason(ctx, m.id, runtime.ExitReasonDiskLimit); err != nil {
			w.log().Error("disk watch: stop rental", "instance_id", m.id, "error", err)
			return
		}
		stopped = append(stopped, m.id)
	}
	var rest []measured
	for _, m := range running {
		if m.limit > 0 && m.used > m.limit {
			stop(m, "its writable layer is over its disk limit")
			continue
		}
		rest = append(rest, m)
	}
	if w.ReserveBytes == 0 {
		return stopped
	}
	freeFn := w.Free
	if freeFn == nil {
		freeFn = Free
	}
	free, err := freeFn(w.Path)
	if err != nil {
		return stopped
	}
	// At the pace of the last interval, the next one would take growth
	// more: stop the fastest writers until the rest cannot reach the
	// reserve.
	var growth uint64
	for _, m := range rest {
		growth += m.grown
	}
	slices.SortFunc(rest, func(a, b measured) int {
		switch {
		case a.grown > b.grown:
			return -1
		case a.grown < b.grown:
			return 1
		}
		return 0
	})
	for _, m := range rest {
		if m.grown == 0 || (free > w.ReserveBytes && free-w.ReserveBytes > growth) {
			break
		}
		stop(m, "the host's disk is about to fall below its reserve")
		growth -= m.grown
	}
	return stopped
}
