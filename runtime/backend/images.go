package backend

import (
	"context"
	"log/slog"
	"time"

	"github.com/host-agent/host-agent/runtime/events"
)

// ReportProgress calls emit with the progress read reads, every interval
// while it changes; progress never goes back within the same total. The
// returned function stops it.
func ReportProgress(ctx context.Context, interval time.Duration, read func(context.Context) events.PullProgress, emit func(events.PullProgress)) (stop func()) {
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
			emit(p)
		}
	}()
	return func() { cancel(); <-done }
}

// CollectImages is the image GC loop both back ends run: while free()
// says the disk has less than minFree bytes free, removeOne removes the
// least recently used image the back end may remove (none in use, none
// pinned) and names it, or answers "" when none is left. It returns the
// images removed.
func CollectImages(minFree uint64, free func() (uint64, error), removeOne func() (string, error), log *slog.Logger) ([]string, error) {
	var removed []string
	for {
		f, err := free()
		if err != nil || f >= minFree {
			return removed, err
		}
		ref, err := removeOne()
		if err != nil || ref == "" {
			return removed, err
		}
		log.Info("removed unused image to free disk space", "image", ref, "free_bytes", f, "wanted_bytes", minFree)
		removed = append(removed, ref)
	}
}
