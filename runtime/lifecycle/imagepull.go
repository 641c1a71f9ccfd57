package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// MaxPinHours bounds a pre-pull's pin: a year. A pin never shortens
// one the image already has.
const MaxPinHours = 24 * 366

// ImagePull asks for an image ahead of any start.
type ImagePull struct {
	// Ref is the image's reference, spelled in full.
	Ref          string
	RegistryAuth *runtime.RegistryAuth
	// Pin, when above zero, keeps the image from image GC for this long
	// after it is present.
	Pin time.Duration
}

// errNoImageStore answers the image API on a back end that keeps no images
// of its own.
var errNoImageStore = fmt.Errorf("this runtime does not manage images: %w", errdefs.ErrNotImplemented)

func (l *Lifecycle) images() (runtime.ImageStore, error) {
	is, ok := l.be.(runtime.ImageStore)
	if !ok {
		return nil, errNoImageStore
	}
	return is, nil
}

// Images lists the images the back end holds for rentals.
func (l *Lifecycle) Images(ctx context.Context) ([]runtime.Image, error) {
	is, err := l.images()
	if err != nil {
		return nil, err
	}
	return is.Images(ctx)
}

// PullImage makes p's image present ahead of any start. An image already
// present (and not pulled with credentials, which only a pull with
// credentials the registry accepts may reuse) is answered at once, pinned
// when p asks for it. Otherwise the pull runs detached from the caller and
// pulling is true: its events (image.pulling, then image.pulled or
// image.failed) report how it ends. A second request for an image being
// pulled joins the pull in flight.
func (l *Lifecycle) PullImage(ctx context.Context, p ImagePull) (img runtime.Image, pulling bool, err error) {
	is, err := l.images()
	if err != nil {
		return runtime.Image{}, false, err
	}
	if _, err := reference.ParseDockerRef(p.Ref); err != nil {
		return runtime.Image{}, false, runtime.FieldError("image", "is not a valid image reference: "+err.Error())
	}
	if err := l.refuseIfDrained(ctx); err != nil {
		return runtime.Image{}, false, err
	}
	if l.joinPull(p) {
		return runtime.Image{}, true, nil
	}
	if present, ok, err := l.presentImage(ctx, is, p.Ref); err != nil {
		return runtime.Image{}, false, err
	} else if ok && !present.PulledWithAuth {
		if until := time.Now().Add(p.Pin).UTC(); p.Pin > 0 && until.After(present.PinnedUntil) {
			if err := is.PinImage(ctx, p.Ref, until); err != nil {
				return runtime.Image{}, false, err
			}
			present.PinnedUntil = until
		}
		return present, false, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if pull := l.pulls[p.Ref]; pull != nil {
		pull.pin = max(pull.pin, p.Pin)
		return runtime.Image{}, true, nil
	}
	if l.ctx.Err() != nil {
		return runtime.Image{}, false, fmt.Errorf("the agent is shutting down: %w", errdefs.ErrUnavailable)
	}
	pull := &prePull{pin: p.Pin}
	l.pulls[p.Ref] = pull
	l.wg.Go(func() {
		defer func() {
			l.mu.Lock()
			delete(l.pulls, p.Ref)
			l.mu.Unlock()
		}()
		l.pullImage(is, p, pull)
	})
	return runtime.Image{}, true, nil
}

// prePull is a pre-pull in flight.
type prePull struct {
	// pin is the longest pin its requests asked for (under l.mu).
	pin time.Duration
}

// joinPull joins p to a pre-pull of its image in flight, if there is one,
// keeping the longest pin asked for.
func (l *Lifecycle) joinPull(p ImagePull) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	pull := l.pulls[p.Ref]
	if pull == nil {
		return false
	}
	pull.pin = max(pull.pin, p.Pin)
	return true
}

// presentImage looks ref up among the images held.
func (l *Lifecycle) presentImage(ctx context.Context, is runtime.ImageStore, ref string) (runtime.Image, bool, error) {
	imgs, err := is.Images(ctx)
	if err != nil {
		return runtime.Image{}, false, err
	}
	for _, img := range imgs {
		if img.Ref == ref {
			return img, true, nil
		}
	}
	return runtime.Image{}, false, nil
}

// pullImage runs a pre-pull to its end, publishing its events.
func (l *Lifecycle) pullImage(is runtime.ImageStore, p ImagePull, pull *prePull) {
	began := time.Now()
	l.pub.Publish(events.Event{Type: events.TypeImagePulling, Image: p.Ref, Status: "pulling"})
	img, err := is.PullImage(l.ctx, p.Ref, p.RegistryAuth, func(pr events.PullProgress) {
		l.pub.Publish(events.Event{Type: events.TypeImagePulling, Image: p.Ref, Status: "pulling", Progress: &pr})
	})
	l.mu.Lock()
	pin := pull.pin
	l.mu.Unlock()
	if until := time.Now().Add(pin).UTC(); err == nil && pin > 0 && until.After(img.PinnedUntil) {
		// A fresh context: the pull is done, and an agent shutting down
		// now should still record the pin it was asked for.
		ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
		err = is.PinImage(ctx, p.Ref, until)
		cancel()
		img.PinnedUntil = until
	}
	if err != nil {
		l.log.Warn("pre-pull failed", "image", p.Ref, "error", err)
		l.pub.Publish(events.Event{Type: events.TypeImageFailed, Image: p.Ref, Status: "failed", Error: err.Error(), Code: PullErrorCode(err)})
		return
	}
	l.pub.Publish(events.Event{Type: events.TypeImagePulled, Image: p.Ref, Status: "pulled",
		Digest: img.Digest, SizeBytes: img.SizeBytes, Seconds: time.Since(began).Seconds()})
}

// PullErrorCode names what went wrong with a pull, as a start's error
// answer does: the PullError's kind, or one read from the error's kind.
func PullErrorCode(err error) string {
	var pe *runtime.PullError
	if errors.As(err, &pe) {
		return pe.Kind
	}
	switch {
	case errdefs.IsNotFound(err):
		return runtime.PullNotFound
	case errdefs.IsUnauthorized(err), errdefs.IsPermissionDenied(err):
		return runtime.PullUnauthorized
	}
	return ""
}

// RemoveImage removes an image: NotFound when there is none, Conflict
// while a rental uses it or while it is being pulled.
func (l *Lifecycle) RemoveImage(ctx context.Context, ref string) error {
	is, err := l.images()
	if err != nil {
		return err
	}
	l.mu.Lock()
	pulling := l.pulls[ref] != nil
	l.mu.Unlock()
	if pulling {
		return fmt.Errorf("image %s is being pulled: %w", ref, errdefs.ErrConflict)
	}
	return is.RemoveImage(ctx, ref)
}
