package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// heldRuntime is the back end the agent stays on rather than switching
// away from its rentals: while its daemon does not answer, /readyz says
// why the agent waits for it.
type heldRuntime struct {
	runtime.Runtime
	why string
}

// holdRuntime wraps be when the agent stays on it for a reason; be itself
// otherwise.
func holdRuntime(be runtime.Runtime, why string) runtime.Runtime {
	if why == "" {
		return be
	}
	return heldRuntime{Runtime: be, why: why}
}

func (h heldRuntime) Ping(ctx context.Context) error {
	if err := h.Runtime.Ping(ctx); err != nil {
		return fmt.Errorf("%s: %w", h.why, err)
	}
	return nil
}

// SweepLeftovers passes the restore's sweep to the back end.
func (h heldRuntime) SweepLeftovers(ctx context.Context, live []runtime.Instance) error {
	if sw, ok := h.Runtime.(runtime.LeftoverSweeper); ok {
		return sw.SweepLeftovers(ctx, live)
	}
	return nil
}

// heldRuntime passes the image API through to a back end that keeps images.
var _ runtime.ImageStore = heldRuntime{}

func (h heldRuntime) imageStore() (runtime.ImageStore, error) {
	is, ok := h.Runtime.(runtime.ImageStore)
	if !ok {
		return nil, fmt.Errorf("this runtime does not manage images: %w", errdefs.ErrNotImplemented)
	}
	return is, nil
}

// Images passes the inventory through to the back end.
func (h heldRuntime) Images(ctx context.Context) ([]runtime.Image, error) {
	is, err := h.imageStore()
	if err != nil {
		return nil, err
	}
	return is.Images(ctx)
}

// PullImage passes a pre-pull through to the back end.
func (h heldRuntime) PullImage(ctx context.Context, ref string, auth *runtime.RegistryAuth, progress func(events.PullProgress)) (runtime.Image, error) {
	is, err := h.imageStore()
	if err != nil {
		return runtime.Image{}, err
	}
	return is.PullImage(ctx, ref, auth, progress)
}

// PinImage passes a pin through to the back end.
func (h heldRuntime) PinImage(ctx context.Context, ref string, until time.Time) error {
	is, err := h.imageStore()
	if err != nil {
		return err
	}
	return is.PinImage(ctx, ref, until)
}

// RemoveImage passes a removal through to the back end.
func (h heldRuntime) RemoveImage(ctx context.Context, ref string) error {
	is, err := h.imageStore()
	if err != nil {
		return err
	}
	return is.RemoveImage(ctx, ref)
}
