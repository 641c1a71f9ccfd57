package containerd

import (
	"context"
	"fmt"
	"strconv"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/task"
	ctrevents "github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// watch follows task exits and OOM kills in the namespace for as long as
// ctx lives (runtime.Watch).
func (r *Runtime) watch(ctx context.Context) {
	runtime.Watch(ctx, runtime.Watcher{
		Name: "containerd", Where: []any{"address", r.opts.Address}, Log: r.log, Pub: r.pub,
		Connect: func(ctx, sub context.Context) (func() error, error) {
			r.tasks.drop()
			filters := make([]string, 0, len(taskTopics))
			for _, topic := range taskTopics {
				filters = append(filters, fmt.Sprintf(`topic==%q,namespace==%q`, topic, r.opts.Namespace))
			}
			envC, errC := r.client.Subscribe(sub, filters...)
			if err := r.reconcile(ctx); err != nil {
				return nil, err
			}
			r.dropStartLeases(ctx)
			return func() error {
				defer r.tasks.drop()
				return r.follow(ctx, envC, errC)
			}, nil
		},
	})
}

// taskTopics are the events the watcher follows: exits and OOM kills to
// report, and every task state change for the task cache.
var taskTopics = []string{"/tasks/exit", "/tasks/oom", "/tasks/create", "/tasks/start",
	"/tasks/delete", "/tasks/paused", "/tasks/resumed"}

// follow handles exit events until the subscription fails.
func (r *Runtime) follow(ctx context.Context, envC <-chan *ctrevents.Envelope, errC <-chan error) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errC:
			if err == nil {
				err = fmt.Errorf("event stream closed: %w", errdefs.ErrUnavailable)
			}
			return convertErr(err)
		case env := <-envC:
			if env == nil {
				continue
			}
			ev, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				r.log.Warn("undecodable containerd event", "topic", env.Topic, "error", err)
				continue
			}
			r.tasks.apply(ev)
			if oom, ok := ev.(*apievents.TaskOOM); ok {
				r.recordOOM(ctx, oom.ContainerID)
				continue
			}
			exit, ok := ev.(*apievents.TaskExit)
			// Only the init process's exit ends an instance.
			if !ok || (exit.ID != "" && exit.ID != exit.ContainerID) {
				continue
			}
			var at time.Time
			if exit.ExitedAt != nil {
				at = exit.ExitedAt.AsTime()
			}
			r.recordExit(ctx, exit.ContainerID, int(exit.ExitStatus), at)
		}
	}
}

// reconcile reports every exit the agent has not recorded yet: stopped
// tasks, and started instances whose task is gone. containerd removes a task
// that exited while containerd itself was down when it starts again, and its
// exit code with it; such an exit is reported with its code unknown rather
// than not at all.
func (r *Runtime) reconcile(ctx context.Context) error {
	infos, err := r.client.ContainerService().List(ctx, rentalFilter)
	if err != nil {
		return convertErr(err)
	}
	resp, err := r.client.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		return convertErr(err)
	}
	procs := map[string]*task.Process{}
	for _, p := range resp.Tasks {
		procs[taskContainerID(p)] = p
	}
	r.tasks.reset(resp.Tasks)
	for _, info := range infos {
		if info.Labels[runtime.LabelExitCode] != "" {
			continue
		}
		p := procs[info.ID]
		switch {
		case p != nil && p.Status == task.Status_STOPPED:
			var at time.Time
			if p.ExitedAt != nil {
				at = p.ExitedAt.AsTime()
			}
			r.recordExit(ctx, info.ID, int(p.ExitStatus), at)
		case p == nil && info.Labels[runtime.LabelStartedAt] != "":
			r.recordExit(ctx, info.ID, exitCodeUnknown, time.Time{})
		}
	}
	return nil
}

// exitCodeUnknown stands for an exit whose code containerd no longer knows.
const exitCodeUnknown = -1

// exitRetries is how many times a failed exit recording is tried again
// (after 1 s, 2 s, 4 s, ...): under load containerd may not answer in time,
// and an exit is reported only here.
const exitRetries = 5

// recordExit publishes an instance's exit once and keeps its code in the
// container's labels. Publishing comes first: after a crash in between, the
// exit is reported twice rather than never. Recordings of different
// instances run side by side; those of one instance one at a time (the
// exit watcher and the event stream both report each exit).
func (r *Runtime) recordExit(ctx context.Context, id string, code int, at time.Time) {
	unlock := r.exits.Lock(id)
	defer unlock()
	if at.IsZero() {
		at = time.Now()
	}
	published := false
	for attempt := 0; ; attempt++ {
		err := r.tryRecordExit(ctx, id, code, at, &published)
		if err == nil {
			return
		}
		if attempt == exitRetries {
			r.log.Error("record exit: giving up; the next agent start reports it", "instance", id, "published", published, "error", err)
			return
		}
		r.log.Warn("record exit; retrying", "instance", id, "published", published, "error", err)
		select {
		case <-time.After(time.Second << attempt):
		case <-r.ctx.Done():
			return
		}
	}
}

// tryRecordExit is one try of recordExit; it sets *published once the exit
// event is out, so that a retry only writes the labels.
func (r *Runtime) tryRecordExit(ctx context.Context, id string, code int, at time.Time, published *bool) error {
	// Once begun, a recording completes even if the agent is shutting down,
	// so that the exit is not reported again by the next agent.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	info, err := r.client.ContainerService().Get(ctx, id)
	if err != nil {
		if err = convertErr(err); errdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("read container: %w", err)
	}
	if info.Labels[runtime.LabelInstanceID] == "" || info.Labels[runtime.LabelExitCode] != "" {
		return nil
	}
	ev := events.Event{Type: events.TypeInstanceExited, InstanceID: id, Status: string(runtime.StatusExited)}
	newLabels := map[string]string{}
	if info.Labels[runtime.LabelOOMKilled] == "true" || r.oomKilledByCgroup(ctx, id) {
		ev.OOMKilled = true
		newLabels[runtime.LabelOOMKilled] = "true"
	}
	label := runtime.ExitCodeUnknown
	if code == exitCodeUnknown {
		ev.Message = "exit code unavailable: the task was removed while the agent was not connected to containerd"
	} else {
		ev.ExitCode = &code
		label = strconv.Itoa(code)
	}
	if !*published {
		r.log.Info("instance exited", "instance", id, "exit_code", label, "oom_killed", ev.OOMKilled)
		r.pub.Publish(ev)
		*published = true
	}
	c, err := r.client.LoadContainer(ctx, id)
	if err == nil {
		newLabels[runtime.LabelExitCode] = label
		newLabels[runtime.LabelFinishedAt] = at.UTC().Format(time.RFC3339Nano)
		_, err = c.SetLabels(ctx, newLabels)
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("record exit in labels: %w", convertErr(err))
	}
	return nil
}
