package runtime

import (
	"context"
	"time"

	"github.com/host-agent/host-agent/runtime/events"
)

// ReportPullProgress publishes instance id's pull progress, as read reads
// it, every interval while it changes; progress never goes back within the
// same total (a back end reading a layer between two states may count it
// as nothing). The returned function stops it.
func ReportPullProgress(ctx context.Context, pub events.Publisher, id string, interval time.Duration, read func(context.Context) events.PullProgress) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		var last events.PullProgress
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			p := read(ctx)
			if p.TotalBytes == last.TotalBytes && p.DoneBytes < last.DoneBytes {
				p.DoneBytes = last.DoneBytes
			}
			if p.TotalBytes == 0 || p == last {
				continue
			}
			last = p
			pub.Publish(events.Event{Type: events.TypeInstancePullProgress, InstanceID: id, Status: "pulling", Progress: &p})
		}
	}()
	return func() { cancel(); <-done }
}
