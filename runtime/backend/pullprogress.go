package backend

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
	return ReportProgress(ctx, interval, read, func(p events.PullProgress) {
		pub.Publish(events.Event{Type: events.TypeInstancePullProgress, InstanceID: id, Status: "pulling", Progress: &p})
	})
}
