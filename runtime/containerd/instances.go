package containerd

import (
	"context"
	"fmt"
	"strconv"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
)

// rentalFilter selects the agent's containers in the namespace.
var rentalFilter = fmt.Sprintf("labels.%q", runtime.LabelInstanceID)

// Get implements runtime.Runtime.
func (r *Runtime) Get(ctx context.Context, id string) (runtime.Instance, error) {
	ctx = r.nsCtx(ctx)
	info, err := r.client.ContainerService().Get(ctx, id)
	if err != nil {
		if errdefs.IsNotFound(convertErr(err)) {
			return runtime.Instance{}, notFound(id)
		}
		return runtime.Instance{}, convertErr(err)
	}
	if info.Labels[runtime.LabelInstanceID] == "" {
		return runtime.Instance{}, notFound(id)
	}
	var proc *task.Process
	resp, err := r.client.TaskService().Get(ctx, &tasksapi.GetRequest{ContainerID: id})
	switch err = convertErr(err); {
	case err == nil:
		proc = resp.Process
	case !errdefs.IsNotFound(err):
		return runtime.Instance{}, err
	}
	return toInstance(info, proc), nil
}

// List implements runtime.Runtime. The containers come from containerd, their
// tasks' state from the task cache while the event stream is up (see
// taskCache), and from containerd otherwise.
func (r *Runtime) List(ctx context.Context) ([]runtime.Instance, error) {
	return r.list(ctx, true)
}

// list reads the instances, taking the tasks' state from the cache when
// cached allows it and the cache is live.
func (r *Runtime) list(ctx context.Context, cached bool) ([]runtime.Instance, error) {
	ctx = r.nsCtx(ctx)
	infos, err := r.client.ContainerService().List(ctx, rentalFilter)
	if err != nil {
		return nil, convertErr(err)
	}
	var procs map[string]*task.Process
	live := false
	if cached {
		procs, live = r.tasks.snapshot()
	}
	if !live {
		r.taskLists.Add(1)
		resp, err := r.client.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
		if err != nil {
			return nil, convertErr(err)
		}
		procs = make(map[string]*task.Process, len(resp.Tasks))
		for _, p := range resp.Tasks {
			procs[taskContainerID(p)] = p
		}
	}
	out := make([]runtime.Instance, 0, len(infos))
	for _, info := range infos {
		out = append(out, toInstance(info, procs[info.ID]))
	}
	return out, nil
}

// taskContainerID names the container of a listed task: containerd lists a
// task under its ID, which is its container's, and leaves ContainerID empty.
func taskContainerID(p *task.Process) string {
	if p.ContainerID != "" {
		return p.ContainerID
	}
	return p.ID
}

func notFound(id string) error {
	return fmt.Errorf("instance %q: %w", id, errdefs.ErrNotFound)
}

// toInstance reads an instance from its container record and its task (nil
// when it has none). An exit recorded in the labels wins over the task's
// state, which may be gone.
func toInstance(info containers.Container, proc *task.Process) runtime.Instance {
	l := info.Labels
	inst := backend.FromLabels(l)
	inst.ID, inst.ContainerID = info.ID, info.ID
	inst.Status = runtime.StatusCreated
	inst.CreatedAt = info.CreatedAt
	inst.StartedAt = parseTime(l[runtime.LabelStartedAt])
	inst.OOMKilled = l[runtime.LabelOOMKilled] == "true"
	if t := parseTime(l[runtime.LabelCreatedAt]); !t.IsZero() {
		inst.CreatedAt = t
	}
	if proc == nil && !inst.StartedAt.IsZero() {
		// Started once, and its task is gone: it has exited.
		inst.Status = runtime.StatusExited
	}
	if proc != nil {
		inst.Pid = proc.Pid
		switch proc.Status {
		case task.Status_RUNNING, task.Status_PAUSING:
			inst.Status = runtime.StatusRunning
		case task.Status_PAUSED:
			inst.Status = runtime.StatusPaused
		case task.Status_STOPPED:
			inst.Status = runtime.StatusExited
			code := int(proc.ExitStatus)
			inst.ExitCode = &code
			if proc.ExitedAt != nil {
				inst.FinishedAt = proc.ExitedAt.AsTime()
			}
		case task.Status_CREATED:
			inst.Status = runtime.StatusCreated
		default:
			inst.Status = runtime.StatusUnknown
		}
	}
	if s := l[runtime.LabelExitCode]; s != "" {
		inst.Status = runtime.StatusExited
		inst.ExitCode = nil
		if code, err := strconv.Atoi(s); err == nil {
			inst.ExitCode = &code
		}
		inst.FinishedAt = parseTime(l[runtime.LabelFinishedAt])
	}
	if inst.Status == runtime.StatusExited {
		inst.Pid = 0
		inst.ExitReason = runtime.ExitReason(l[runtime.LabelExitReason], inst.OOMKilled)
	}
	return inst
}

func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}
