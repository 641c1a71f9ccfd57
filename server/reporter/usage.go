package reporter

import (
	"context"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// UsageMeter meters the rentals (runtime/usage's Meter): Last answers
// what was read last, Observe reads an instance's counters now.
type UsageMeter interface {
	Observe(ctx context.Context, inst runtime.Instance) events.Usage
	Last(id string) (events.Usage, bool)
}

// usageOf is inst's usage for the heartbeat: as last read (the meter
// reads every rental on its own), read now for one never read; nil
// without a meter.
func (r *Reporter) usageOf(ctx context.Context, inst runtime.Instance) *events.Usage {
	if r.opts.Usage == nil {
		return nil
	}
	u, ok := r.opts.Usage.Last(inst.ID)
	if !ok {
		u = r.opts.Usage.Observe(ctx, inst)
	}
	return &u
}
