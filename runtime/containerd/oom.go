package containerd

import (
	"context"

	cgroup1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"

	"github.com/host-agent/host-agent/runtime"
)

// recordOOM keeps in the container's labels that the kernel killed a
// process of the instance for exceeding its memory limit (containerd's
// TaskOOM event), so that its exit, its state and the heartbeat say so,
// whenever the exit is read.
func (r *Runtime) recordOOM(ctx context.Context, id string) {
	unlock := r.exits.Lock(id)
	defer unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return
	}
	labels, err := c.Labels(ctx)
	if err != nil || labels[runtime.LabelInstanceID] == "" || labels[runtime.LabelOOMKilled] == "true" {
		return
	}
	r.log.Warn("instance hit its memory limit; the kernel killed a process", "instance_id", id)
	if _, err := c.SetLabels(ctx, map[string]string{runtime.LabelOOMKilled: "true"}); err != nil && !errdefs.IsNotFound(err) {
		r.log.Warn("record OOM kill", "instance_id", id, "error", err)
	}
}

// oomKilledByCgroup reads the kernel's count of OOM kills in the task's
// cgroup (memory.oom_control on cgroup v1, memory.events on v2). It backs
// the TaskOOM event, which may reach the agent after the exit, or not at all
// when the agent was away; it is only readable while the task exists.
func (r *Runtime) oomKilledByCgroup(ctx context.Context, id string) bool {
	resp, err := r.client.TaskService().Metrics(ctx, &tasksapi.MetricsRequest{Filters: []string{"id==" + id}})
	if err != nil || len(resp.Metrics) == 0 || resp.Metrics[0].Data == nil {
		return false
	}
	v, err := typeurl.UnmarshalAny(resp.Metrics[0].Data)
	if err != nil {
		return false
	}
	switch m := v.(type) {
	case *cgroup1stats.Metrics:
		return m.GetMemoryOomControl().GetOomKill() > 0
	case *cgroup2stats.Metrics:
		return m.GetMemoryEvents().GetOomKill() > 0
	}
	return false
}
