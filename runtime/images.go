package runtime

import (
	"context"
	"log/slog"
	"time"

	"github.com/host-agent/host-agent/runtime/events"
)

// Image is an image the runtime holds for rentals.
type Image struct {
	// Ref is the image's reference, spelled in full
	// (docker.io/library/nginx:latest).
	Ref string
	// Digest is the image's manifest (or, where the runtime has none, its
	// configuration) digest.
	Digest    string
	SizeBytes int64
	// LastUsed is when a start last used it, or when it was pulled.
	LastUsed time.Time
	// PinnedUntil is when its pin expires; zero when it is not pinned.
	// Image GC never removes a pinned image.
	PinnedUntil time.Time
	// InUse says that a rental's container uses it.
	InUse bool
	// PulledWithAuth says that it was pulled with a request's credentials:
	// it is handed only to a request whose credentials the registry accepts.
	PulledWithAuth bool
}

// ImageStore is a back end that keeps images for rentals and can be told to
// pull, pin and remove them ahead of any start.
type ImageStore interface {
	// Images lists the images held for rentals.
	Images(ctx context.Context) ([]Image, error)
	// PullImage makes the image present, as a start would (an image pulled
	// with credentials is reused only with credentials the registry
	// accepts), reporting the pull's progress to progress. It returns the
	// image as it is then.
	PullImage(ctx context.Context, ref string, auth *RegistryAuth, progress func(events.PullProgress)) (Image, error)
	// PinImage keeps the image from image GC until until.
	PinImage(ctx context.Context, ref string, until time.Time) error
	// RemoveImage removes the image: NotFound when there is none,
	// Conflict while a rental's container uses it.
	RemoveImage(ctx context.Context, ref string) error
}

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
