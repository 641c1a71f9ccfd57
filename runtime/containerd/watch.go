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
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/host-agent/host-agent/runtime/events"
)

// watch follows task exits and OOM kills in the namespace for as long as
// ctx lives (backend.Watch).
func (r *Runtime) watch(ctx context.Context) {
	backend.Watch(ctx, backend.Watcher{
		Name: "containerd", Where: []any{"address", r.opts.Address}, Log: r.log, Pub: r.pub,
		Connect: func(ctx, sub context.Context) (func() error, error) {
			r.tasks.drop()
			filters := make([]string, 0, len(taskTopics)+1)
			for _, topic := range taskTopics {
				filters = append(filters, fmt.Sprintf(`topic==%q,namespace==%q`, topic, r.opts.Namespace))
			}
			filters = append(filters, fmt.Sprintf(`topic==%q,namespace==%q`, syncTopic, r.opts.Namespace))
			subscribe := r.client.Subscribe
			if r.opts.subscribe != nil {
				subscribe = r.opts.subscribe
			}
			envC, errC := subscribe(sub, filters...)
			if _, err := r.resync(ctx, nil); err != nil {
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

// syncTopic carries the marker the watcher publishes in its namespace until
// its subscription delivers an event (see follow).
const syncTopic = "/host-agent/sync"

const (
	// syncRetry is how often the marker is published again, and a failed
	// resync tried again.
	syncRetry = time.Second
	// syncTries bounds the markers published for one subscription; past
	// it, the periodic resync alone catches what the stream missed.
	syncTries = 30
)

// follow handles the events until the subscription fails.
//
// containerd's Subscribe returns before containerd has registered the
// subscription, so the snapshot the watcher took after subscribing may be
// older than the first event the stream delivers: a task that exits in
// between is in neither. Only an event proves the registration; until one
// arrives, follow publishes a marker on syncTopic, and on the first event
// it resyncs, which catches whatever fell into the gap. After that it
// resyncs every ResyncInterval, for events that are lost all the same (a
// shim gives up publishing an event that containerd did not take in time).
func (r *Runtime) follow(ctx context.Context, envC <-chan *ctrevents.Envelope, errC <-chan error) error {
	retry := time.NewTicker(syncRetry)
	defer retry.Stop()
	periodic := time.NewTicker(r.opts.ResyncInterval)
	defer periodic.Stop()
	confirmed, due, tries := false, false, 1
	r.publishSync(ctx)
	gone := map[string]bool{}
	resync := func() {
		var err error
		if gone, err = r.resync(ctx, gone); err != nil {
			r.log.Warn("resync with containerd; retrying", "error", err)
		}
		due = err != nil
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errC:
			if err == nil {
				err = fmt.Errorf("event stream closed: %w", errdefs.ErrUnavailable)
			}
			return convertErr(err)
		case <-retry.C:
			switch {
			case confirmed:
			case tries < syncTries:
				tries++
				r.publishSync(ctx)
			case tries == syncTries:
				tries++
				r.log.Warn("containerd's event stream delivered nothing yet; relying on the periodic resync", "interval", r.opts.ResyncInterval)
			}
			if due {
				resync()
			}
		case <-periodic.C:
			resync()
		case env := <-envC:
			if env == nil {
				continue
			}
			if env.Topic != syncTopic {
				r.handleEvent(ctx, env)
			}
			if !confirmed {
				confirmed = true
				resync()
			}
		}
	}
}

// publishSync publishes the marker that tells follow its subscription is
// registered. A failure only delays that: the marker is published again.
func (r *Runtime) publishSync(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, syncRetry)
	defer cancel()
	if err := r.client.EventService().Publish(ctx, syncTopic, &emptypb.Empty{}); err != nil {
		r.log.Debug("publish event stream marker", "error", err)
	}
}

// handleEvent applies one task event to the cache and reports the exits
// and OOM kills it tells.
func (r *Runtime) handleEvent(ctx context.Context, env *ctrevents.Envelope) {
	ev, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		r.log.Warn("undecodable containerd event", "topic", env.Topic, "error", err)
		return
	}
	r.tasks.apply(ev)
	if oom, ok := ev.(*apievents.TaskOOM); ok {
		r.recordOOM(ctx, oom.ContainerID)
		return
	}
	exit, ok := ev.(*apievents.TaskExit)
	// Only the init process's exit ends an instance.
	if !ok || (exit.ID != "" && exit.ID != exit.ContainerID) {
		return
	}
	var at time.Time
	if exit.ExitedAt != nil {
		at = exit.ExitedAt.AsTime()
	}
	r.recordExit(ctx, exit.ContainerID, int(exit.ExitStatus), at)
}

// resync lists the containers and tasks from containerd, not from the
// cache, brings the task cache in line (resetting it when it is not live,
// correcting it otherwise), and reports every exit the agent has not
// recorded yet: stopped tasks, and started instances whose task is gone.
// containerd removes a task that exited while containerd itself was down
// when it starts again, and its exit code with it; such an exit is reported
// with its code unknown rather than not at all.
//
// While the event stream is up (gone not nil), no event is applied during
// a resync, and an exit the agent caused itself may still be queued with
// its code: a started instance whose task is gone is then reported only
// when its task was gone at the previous resync already. The instances
// whose task is gone are returned for the next resync.
func (r *Runtime) resync(ctx context.Context, gone map[string]bool) (map[string]bool, error) {
	since := r.tasks.mark()
	infos, err := r.client.ContainerService().List(ctx, rentalFilter)
	if err != nil {
		return gone, convertErr(err)
	}
	resp, err := r.client.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		return gone, convertErr(err)
	}
	procs := map[string]*task.Process{}
	for _, p := range resp.Tasks {
		procs[taskContainerID(p)] = p
	}
	if gone == nil {
		r.tasks.reset(resp.Tasks)
	} else if fixed := r.tasks.correct(resp.Tasks, since); len(fixed) > 0 {
		r.log.Info("task cache corrected from containerd", "containers", fixed)
	}
	nowGone := map[string]bool{}
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
			if gone != nil && !gone[info.ID] {
				nowGone[info.ID] = true
				continue
			}
			r.recordExit(ctx, info.ID, exitCodeUnknown, time.Time{})
		}
	}
	return nowGone, nil
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
	r.recordExitTries(ctx, id, code, at, exitRetries)
}

// recordExitOnce is recordExit with one try, for a caller that cannot wait
// for retries (a terminate): when it fails, the exit is left to the event
// stream and the resyncs, which retry.
func (r *Runtime) recordExitOnce(ctx context.Context, id string, code int, at time.Time) {
	r.recordExitTries(ctx, id, code, at, 0)
}

// recordExitTries is recordExit with retries tries after the first.
func (r *Runtime) recordExitTries(ctx context.Context, id string, code int, at time.Time, retries int) {
	unlock := r.exits.Lock(id)
	defer unlock()
	if at.IsZero() {
		at = time.Now()
	}
	published := false
	for attempt := 0; ; attempt++ {
		err := r.tryRecordExit(ctx, id, code, at, &published)
		switch {
		case err == nil:
			return
		case retries == 0:
			r.log.Warn("record exit at terminate; left to the event stream", "instance_id", id, "published", published, "error", err)
			return
		case attempt == retries:
			r.log.Error("record exit: giving up; the next agent start reports it", "instance_id", id, "published", published, "error", err)
			return
		}
		r.log.Warn("record exit; retrying", "instance_id", id, "published", published, "error", err)
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
	ev.Reason = runtime.ExitReason(info.Labels[runtime.LabelExitReason], ev.OOMKilled)
	label := runtime.ExitCodeUnknown
	if code == exitCodeUnknown {
		ev.Message = "exit code unavailable: the task was removed while the agent was not connected to containerd"
	} else {
		ev.ExitCode = &code
		label = strconv.Itoa(code)
	}
	if !*published && ev.OOMKilled && info.Labels[runtime.LabelOOMKilled] != "true" {
		// Before the event: whoever reads the instance on hearing of its
		// exit sees why, although its exit code is recorded after.
		if c, err := r.client.LoadContainer(ctx, id); err == nil {
			if _, err := c.SetLabels(ctx, map[string]string{runtime.LabelOOMKilled: "true"}); err != nil && !errdefs.IsNotFound(convertErr(err)) {
				return fmt.Errorf("record OOM kill in labels: %w", convertErr(err))
			}
		}
	}
	if !*published {
		r.log.Info("instance exited", "instance_id", id, "exit_code", label, "oom_killed", ev.OOMKilled, "reason", ev.Reason)
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
