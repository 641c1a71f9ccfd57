package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	rentalusage "github.com/host-agent/host-agent/runtime/usage"
)

// usageInterval is how often every rental's usage is read, so that the
// metrics, an exit's figures and the records kept across restarts are at
// most that old.
const usageInterval = 10 * time.Second

// newMeter meters the rentals of backend, keeping its records in
// STATE_DIR/usage; it reads what the back end can read (rentalusage.Sampler,
// rentalusage.DiskUser).
func newMeter(cfg config, backend any, logger *slog.Logger) (*rentalusage.Meter, error) {
	opts := rentalusage.Options{Dir: filepath.Join(cfg.StateDir, "usage"), Logger: logger}
	if s, ok := backend.(rentalusage.Sampler); ok {
		opts.Sampler = s
	}
	if d, ok := backend.(rentalusage.DiskUser); ok {
		opts.Disk = d
	}
	return rentalusage.NewMeter(opts)
}

// meterRentals reads every rental's usage each usageInterval until ctx
// ends, and forgets the records of rentals that are gone.
func meterRentals(ctx context.Context, rt runtime.Runtime, m *rentalusage.Meter) {
	t := time.NewTicker(usageInterval)
	defer t.Stop()
	for {
		lctx, cancel := context.WithTimeout(ctx, usageInterval)
		if list, err := rt.List(lctx); err == nil {
			live := make(map[string]bool, len(list))
			for _, inst := range list {
				live[inst.ID] = true
				m.Observe(lctx, inst)
			}
			m.Prune(live)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// usageEvents adds a rental's usage to its instance.exited event, and
// forgets it on instance.terminated. The meter is set once the back end
// exists; until then events pass as they are.
type usageEvents struct {
	next  events.Publisher
	meter atomic.Pointer[rentalusage.Meter]
}

// exitSampleTimeout bounds the last reading of an exited rental, taken in
// the path of its event.
const exitSampleTimeout = time.Second

func (p *usageEvents) Publish(e events.Event) {
	m := p.meter.Load()
	if m != nil && e.Type == events.TypeInstanceExited && e.InstanceID != "" {
		// A last reading while the task's cgroup and namespace may still
		// be there; where they are gone, what was kept.
		ctx, cancel := context.WithTimeout(context.Background(), exitSampleTimeout)
		u := m.Observe(ctx, runtime.Instance{ID: e.InstanceID, Status: runtime.StatusRunning})
		cancel()
		e.Usage = &u
	}
	p.next.Publish(e)
	if m != nil && e.Type == events.TypeInstanceTerminated && e.InstanceID != "" {
		m.Forget(e.InstanceID)
	}
}
