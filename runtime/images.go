package runtime

import (
	"context"
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
