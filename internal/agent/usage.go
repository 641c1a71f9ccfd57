package agent

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/usage"
)

// UsageInterval is how often every rental's usage is read, so that the
// metrics, an exit's figures and the records kept across restarts are at
// most that old.
const UsageInterval = 10 * time.Second

// NewMeter meters the rentals of backend, keeping its records in dir
// (STATE_DIR/usage); it reads what the back end can read (usage.Sampler,
// runtime.DiskMeter).
func NewMeter(dir string, backend any, logger *slog.Logger) (*usage.Meter, error) {
	opts := usage.Options{Dir: dir, Logger: logger}
	if s, ok := backend.(usage.Sampler); ok {
		opts.Sampler = s
	}
	if d, ok := backend.(runtime.DiskMeter); ok {
		opts.Disk = d
	}
	return usage.NewMeter(opts)
}

// meterRentals reads every rental's usage each UsageInterval until ctx
// ends, and forgets the records of rentals that are gone.
func meterRentals(ctx context.Context, rt runtime.Runtime, m *usage.Meter) {
	t := time.NewTicker(UsageInterval)
	defer t.Stop()
	for {
		lctx, cancel := context.WithTimeout(ctx, UsageInterval)
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
// exists (New); until then, and in an agent without a meter, events pass
// as they are.
type usageEvents struct {
	next  events.Publisher
	meter atomic.Pointer[usage.Meter]
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
