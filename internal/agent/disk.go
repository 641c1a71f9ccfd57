package agent

import (
	"context"
	"log/slog"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
)

// watchDisk runs the disk limits' watcher over the rentals rt lists until
// ctx ends, every interval; a back end that cannot measure or stop
// rentals is not watched. Each pass's measurement serves the limits'
// admission of the starts that follow.
func watchDisk(ctx context.Context, l *disk.Limits, interval time.Duration, rt disk.Lister, be runtime.Runtime, logger *slog.Logger) {
	meter, ok1 := be.(runtime.DiskMeter)
	stopper, ok2 := be.(runtime.ReasonStopper)
	if !ok1 || !ok2 {
		logger.Error("disk limits are not watched: the back end cannot measure or stop rentals")
		return
	}
	w := &disk.Watcher{Instances: rt, Meter: meter, Stopper: stopper, Interval: interval,
		Path: l.Path, ReserveBytes: l.ReserveBytes, Logger: logger.With("component", "disk-watch"),
		Measured: l.Observe}
	w.Run(ctx)
}
