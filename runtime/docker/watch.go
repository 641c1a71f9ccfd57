package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// Reconnection backoff for the event stream.
const (
	watchBackoffMin = 200 * time.Millisecond
	watchBackoffMax = 5 * time.Second
	watchLogMax     = 5 * time.Minute
)

// watch follows the rentals' exits ("die" events) for as long as ctx
// lives. Each time the stream is (re)established (a daemon restart ends it)
// it reconciles by listing, so that exits that happened while the agent or
// the daemon was away are reported. A broken stream is never taken for an
// exit.
func (r *Runtime) watch(ctx context.Context) {
	backoff := watchBackoffMin
	connected := false
	failures, nextLog, logEvery := 0, time.Time{}, time.Duration(0)
	for ctx.Err() == nil {
		subCtx, cancel := context.WithCancel(ctx)
		filters := r.rentalFilter().Add("type", "container").Add("event", "die")
		stream := r.client.Events(subCtx, client.EventsListOptions{Filters: filters})
		// The stream is asked for before listing: an exit between the two
		// is seen by at least one of them.
		err := r.reconcile(ctx)
		if err == nil {
			if !connected {
				r.log.Info("watching docker events")
				r.pub.Publish(events.Event{Type: events.TypeRuntimeConnected, Message: "docker connection established"})
			}
			connected, backoff = true, watchBackoffMin
			err = r.follow(ctx, stream)
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if connected {
			r.log.Warn("lost docker; reconnecting", "error", err)
			r.pub.Publish(events.Event{Type: events.TypeRuntimeDisconnected, Message: fmt.Sprintf("docker unavailable: %v", err)})
			connected = false
			failures, nextLog, logEvery = 0, time.Time{}, 0
		}
		if failures++; time.Now().After(nextLog) {
			r.log.Error("cannot reach docker; retrying", "host", r.opts.Host, "attempts", failures, "error", err)
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

// follow handles die events until the stream fails.
func (r *Runtime) follow(ctx context.Context, stream client.EventsResult) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err, ok := <-stream.Err:
			if !ok || err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("event stream closed: %w", errdefs.ErrUnavailable)
			}
			return convertErr(err)
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
	r.log.Info("instance exited", "instance", id, "exit_code", strconv.Itoa(code), "oom_killed", oom)
	r.pub.Publish(events.Event{Type: events.TypeInstanceExited, InstanceID: id, Status: string(runtime.StatusExited), ExitCode: &code, OOMKilled: oom})
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		r.log.Warn("record reported exit", "instance", id, "error", err)
	}
}
