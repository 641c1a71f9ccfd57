package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/host-agent/host-agent/runtime/events"
)

// watch follows the rentals' exits ("die" events) for as long as ctx
// lives (backend.Watch), and with a network, the daemon's network events,
// after which (and after each reconnection: a restarted dockerd re-inserts
// its jumps) the agent's rules are checked at once.
func (r *Runtime) watch(ctx context.Context) {
	backend.Watch(ctx, backend.Watcher{
		Name: "docker", Where: []any{"host", r.opts.Host}, Log: r.log, Pub: r.pub,
		Connect: func(ctx, sub context.Context) (func() error, error) {
			filters := r.rentalFilter().Add("type", "container").Add("event", "die")
			stream := r.client.Events(sub, client.EventsListOptions{Filters: filters})
			var nets client.EventsResult
			if r.rules != nil {
				nets = r.client.Events(sub, client.EventsListOptions{Filters: make(client.Filters).Add("type", "network")})
			}
			if err := r.reconcile(ctx); err != nil {
				return nil, err
			}
			if r.rules != nil {
				r.rules.Trigger()
			}
			return func() error { return r.follow(ctx, stream, nets) }, nil
		},
	})
}

// follow handles die events, and network events (nil channels without a
// network), until a stream fails.
func (r *Runtime) follow(ctx context.Context, stream, nets client.EventsResult) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err, ok := <-stream.Err:
			if !ok || err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("event stream closed: %w", errdefs.ErrUnavailable)
			}
			return convertErr(err)
		case err, ok := <-nets.Err:
			if !ok || err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("network event stream closed: %w", errdefs.ErrUnavailable)
			}
			return convertErr(err)
		case <-nets.Messages:
			r.rules.Trigger()
		case msg := <-stream.Messages:
			if msg.Actor.ID == "" {
				continue
			}
			r.recordExit(ctx, msg.Actor.ID)
		}
	}
}

// reconcile reports every exited rental whose exit was not reported yet.
func (r *Runtime) reconcile(ctx context.Context) error {
	list, err := r.client.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: r.rentalFilter()})
	if err != nil {
		return convertErr(err)
	}
	for _, c := range list.Items {
		if r.ours(c.Labels) && (c.State == container.StateExited || c.State == container.StateDead) {
			r.recordExit(ctx, c.ID)
		}
	}
	return nil
}

// recordExit publishes a rental's exit once. Docker keeps the exit code
// with the container; which exits were reported is kept in the state dir,
// since a container's labels cannot change. Publishing comes first: after a
// crash in between, the exit is reported twice rather than never.
func (r *Runtime) recordExit(ctx context.Context, containerID string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	r.exitMu.Lock()
	defer r.exitMu.Unlock()
	marker := r.exitMarker(containerID)
	if _, err := os.Stat(marker); err == nil {
		return
	}
	res, err := r.client.ContainerInspect(ctx, containerID, client.ContainerInspectOptions{})
	if err != nil {
		if !errdefs.IsNotFound(err) {
			r.log.Warn("read container for exit", "container", containerID, "error", err)
		}
		return
	}
	c := res.Container
	if c.Config == nil || !r.ours(c.Config.Labels) || c.State == nil ||
		(c.State.Status != container.StateExited && c.State.Status != container.StateDead) {
		return
	}
	id := c.Config.Labels[runtime.LabelInstanceID]
	code := c.State.ExitCode
	oom := c.State.OOMKilled
	reason := runtime.ExitReason(r.exitReason(c.ID), oom)
	r.log.Info("instance exited", "instance_id", id, "exit_code", strconv.Itoa(code), "oom_killed", oom, "reason", reason)
	r.pub.Publish(events.Event{Type: events.TypeInstanceExited, InstanceID: id, Status: string(runtime.StatusExited), ExitCode: &code, OOMKilled: oom, Reason: reason})
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		r.log.Warn("record reported exit", "instance_id", id, "error", err)
	}
}
