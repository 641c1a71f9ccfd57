package backend

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/host-agent/host-agent/runtime/events"
)

// Reconnection backoff of a back end's event stream.
const (
	watchBackoffMin = 200 * time.Millisecond
	watchBackoffMax = 5 * time.Second
	// watchLogMax is the longest interval between two logs of a daemon
	// that cannot be reached.
	watchLogMax = 5 * time.Minute
)

// Watcher is what Watch needs of a back end.
type Watcher struct {
	// Name names the daemon ("containerd", "docker") in logs and events;
	// Where are log attributes saying where it is ("address", ...).
	Name  string
	Where []any
	Log   *slog.Logger
	Pub   events.Publisher
	// Connect asks for the daemon's event stream on sub (cancelled once the
	// stream is done with), then reconciles by listing, on ctx: asked in
	// that order, an exit between the two is seen by at least one of them.
	// It returns what follows the stream until it fails.
	Connect func(ctx, sub context.Context) (follow func() error, err error)
}

// Watch keeps a back end's event stream for as long as ctx lives. Each time
// the stream is (re)established (a daemon restart ends it) the back end
// reconciles, so that exits that happened while the agent or the daemon was
// away are reported; a broken stream is never taken for an exit. Losing
// and regaining the daemon are logged and published; a daemon never
// reached (a wrong address, or one not started yet) is said at growing
// intervals rather than retried in silence.
func Watch(ctx context.Context, w Watcher) {
	backoff := watchBackoffMin
	connected := false
	failures, nextLog, logEvery := 0, time.Time{}, time.Duration(0)
	for ctx.Err() == nil {
		subCtx, cancel := context.WithCancel(ctx)
		follow, err := w.Connect(ctx, subCtx)
		if err == nil {
			if !connected {
				w.Log.Info("watching " + w.Name + " events")
				w.Pub.Publish(events.Event{Type: events.TypeRuntimeConnected, Message: w.Name + " connection established"})
			}
			connected, backoff = true, watchBackoffMin
			err = follow()
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if connected {
			w.Log.Warn("lost "+w.Name+"; reconnecting", "error", err)
			w.Pub.Publish(events.Event{Type: events.TypeRuntimeDisconnected, Message: fmt.Sprintf("%s unavailable: %v", w.Name, err)})
			connected = false
			failures, nextLog, logEvery = 0, time.Time{}, 0
		}
		if failures++; time.Now().After(nextLog) {
			w.Log.Error("cannot reach "+w.Name+"; retrying", append(append([]any{}, w.Where...), "attempts", failures, "error", err)...)
			logEvery = min(max(2*logEvery, watchBackoffMax), watchLogMax)
			nextLog = time.Now().Add(logEvery)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, watchBackoffMax)
	}
}
