package docker

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// Terminate implements runtime.Runtime for lifecycle.Lifecycle: SIGTERM,
// SIGKILL after timeout (the daemon's stop, which waits for the exit), then
// the exit is published (once, whoever reads it first) and the container is
// removed with its anonymous volumes.
func (r *Runtime) Terminate(ctx context.Context, id string, timeout time.Duration) error {
	c, err := r.inspect(ctx, id)
	if err != nil {
		return err
	}
	if c.State != nil && (c.State.Running || c.State.Paused || c.State.Restarting) {
		// The API counts whole seconds; a part of one is rounded up, so
		// the tenant gets at least its grace period.
		secs := int((timeout + time.Second - 1) / time.Second)
		_, err := r.client.ContainerStop(ctx, c.ID, client.ContainerStopOptions{Signal: "SIGTERM", Timeout: &secs})
		if err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("stop container of %q: %w", id, convertErr(err))
		}
	}
	// The exit is published before the container goes: its die event may
	// be read only after the removal, when the exit can no longer be.
	r.recordExit(ctx, c.ID)
	if _, err := r.client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove container of %q: %w", id, convertErr(err))
	}
	r.forgetExit(c.ID)
	r.removeFiles(id)
	r.removeIFB(id)
	return nil
}
