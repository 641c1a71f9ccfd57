package docker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
)

// rentalFilter selects the agent's containers: every rental carries the
// instance-ID label, so `docker ps --filter label=host-agent.io/instance-id`
// lists them all. A scoped back end asks for its scope's; the agent's own
// skips the scoped ones by their labels (ours), which a filter cannot
// express.
func (r *Runtime) rentalFilter() client.Filters {
	f := make(client.Filters).Add("label", runtime.LabelInstanceID)
	if r.opts.Scope != "" {
		f = f.Add("label", LabelScope+"="+r.opts.Scope)
	}
	return f
}

// inspect reads an instance's container; NotFound when there is none or
// when the container of that name is not a rental.
func (r *Runtime) inspect(ctx context.Context, id string) (container.InspectResponse, error) {
	res, err := r.client.ContainerInspect(ctx, r.containerName(id), client.ContainerInspectOptions{})
	if err != nil {
		if errdefs.IsNotFound(err) {
			return container.InspectResponse{}, notFound(id)
		}
		return container.InspectResponse{}, convertErr(err)
	}
	c := res.Container
	if c.Config == nil || c.Config.Labels[runtime.LabelInstanceID] != id || !r.ours(c.Config.Labels) {
		return container.InspectResponse{}, notFound(id)
	}
	return c, nil
}

// Get implements runtime.Runtime.
func (r *Runtime) Get(ctx context.Context, id string) (runtime.Instance, error) {
	c, err := r.inspect(ctx, id)
	if err != nil {
		return runtime.Instance{}, err
	}
	return r.withReason(toInstance(c)), nil
}

// List implements runtime.Runtime.
func (r *Runtime) List(ctx context.Context) ([]runtime.Instance, error) {
	list, err := r.client.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: r.rentalFilter()})
	if err != nil {
		return nil, convertErr(err)
	}
	out := make([]runtime.Instance, 0, len(list.Items))
	for _, s := range list.Items {
		if !r.ours(s.Labels) {
			continue
		}
		res, err := r.client.ContainerInspect(ctx, s.ID, client.ContainerInspectOptions{})
		if errdefs.IsNotFound(err) {
			continue // removed in between
		}
		if err != nil {
			return nil, convertErr(err)
		}
		out = append(out, r.withReason(toInstance(res.Container)))
	}
	return out, nil
}

// toInstance reads an instance from its container. Docker keeps a stopped
// container's exit code, so it is never lost; the labels hold the rest.
func toInstance(c container.InspectResponse) runtime.Instance {
	l := c.Config.Labels
	inst := backend.FromLabels(l)
	inst.ID, inst.ContainerID = l[runtime.LabelInstanceID], c.ID
	inst.Status = runtime.StatusUnknown
	inst.CreatedAt = parseTime(l[runtime.LabelCreatedAt])
	if inst.CreatedAt.IsZero() {
		inst.CreatedAt = parseTime(c.Created)
	}
	if c.State == nil {
		return inst
	}
	inst.StartedAt = parseTime(c.State.StartedAt)
	switch c.State.Status {
	case container.StateCreated:
		inst.Status = runtime.StatusCreated
	case container.StateRunning, container.StateRestarting:
		inst.Status = runtime.StatusRunning
		inst.Pid = uint32(c.State.Pid)
	case container.StatePaused:
		inst.Status = runtime.StatusPaused
		inst.Pid = uint32(c.State.Pid)
	case container.StateExited, container.StateDead:
		inst.Status = runtime.StatusExited
		code := c.State.ExitCode
		inst.ExitCode = &code
		inst.FinishedAt = parseTime(c.State.FinishedAt)
		inst.OOMKilled = c.State.OOMKilled
	}
	return inst
}

// parseTime reads Docker's and the labels' RFC 3339 times; Docker's zero
// time ("0001-01-01T00:00:00Z") reads as zero.
func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() <= 1 {
		return time.Time{}
	}
	return t
}

// State kept in Options.StateDir.
const (
	// exitsDir holds one empty file per container whose exit was reported.
	exitsDir = "exits"
	// authPullsDir holds one file per image reference pulled with a
	// request's credentials.
	authPullsDir = "auth-pulls"
	// imagesDir holds one file per image reference: when a start last used
	// it and until when it is pinned (Docker's image labels are
	// immutable).
	imagesDir = "images"
	// filesDir holds, per instance, the files the daemon mounts into it
	// read-only (its SSH keys).
	filesDir = "files"
)

// filesDir is where instance id's mounted files are written.
func (r *Runtime) filesDir(id string) string {
	return filepath.Join(r.opts.StateDir, filesDir, id)
}

// removeFiles removes what was written for instance id.
func (r *Runtime) removeFiles(id string) {
	if err := os.RemoveAll(r.filesDir(id)); err != nil {
		r.log.Warn("remove instance files", "instance_id", id, "error", err)
	}
}

func (r *Runtime) exitMarker(containerID string) string {
	return filepath.Join(r.opts.StateDir, exitsDir, containerID)
}

// forgetExit removes the record of a removed container's exit.
func (r *Runtime) forgetExit(containerID string) {
	if err := os.Remove(r.exitMarker(containerID)); err != nil && !os.IsNotExist(err) {
		r.log.Warn("remove exit record", "container", containerID, "error", err)
	}
	if err := os.Remove(r.reasonPath(containerID)); err != nil && !os.IsNotExist(err) {
		r.log.Warn("remove exit reason", "container", containerID, "error", err)
	}
}

func describe(c container.InspectResponse) string {
	if c.State == nil {
		return "unknown"
	}
	return fmt.Sprintf("%s (exit %d)", c.State.Status, c.State.ExitCode)
}
