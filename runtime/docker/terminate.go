package docker

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime/events"
)

// Terminate implements runtime.Runtime for lifecycle.Lifecycle: SIGTERM,
// SIGKILL after timeout (the daemon's stop, which waits for the exit), then
// the container is removed with its anonymous volumes.
func (r *Runtime) Terminate(ctx context.Context, id string, timeout time.Duration) error {
	c, err := r.inspect(ctx, id)
	if err != nil {
		return err
	}
	r.pub.Publish(events.Event{Type: events.TypeInstanceTerminating, InstanceID: id, Status: "terminating"})
	fail := func(err error) error {
		r.pub.Publish(events.Event{Type: events.TypeInstanceFailed, InstanceID: id, Status: "failed", Step: "terminate", Error: err.Error()})
		return err
	}
	if c.State != nil && (c.State.Running || c.State.Paused || c.State.Restarting) {
		// The API counts whole seconds; a part of one is rounded up, so
		// the tenant gets at least its grace period.
		secs := int((timeout + time.Second - 1) / time.Second)
		_, err := r.client.ContainerStop(ctx, c.ID, client.ContainerStopOptions{Signal: "SIGTERM", Timeout: &secs})
		if err != nil && !errdefs.IsNotFound(err) {
			return fail(fmt.Errorf("stop container of %q: %w", id, convertErr(err)))
		}
	}
	if _, err := r.client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !errdefs.IsNotFound(err) {
		return fail(fmt.Errorf("remove container of %q: %w", id, convertErr(err)))
	}
	r.forgetExit(c.ID)
	r.removeFiles(id)
	r.removeIFB(id)
	r.log.Info("instance terminated", "instance_id", id)
	r.pub.Publish(events.Event{Type: events.TypeInstanceTerminated, InstanceID: id, Status: "terminated"})
	return nil
}
