package containerd

import (
	"context"
	"fmt"

	cgroup1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/usage"
)

var _ usage.Sampler = (*Runtime)(nil)

// SampleUsage implements usage.Sampler: CPU time and memory from the
// task's cgroup (containerd's task metrics: usage_usec and memory.peak on
// cgroup v2, cpuacct.usage and memory.max_usage_in_bytes on v1), traffic
// from eth0 inside the rental's pinned network namespace.
func (r *Runtime) SampleUsage(ctx context.Context, id string) (usage.Sample, error) {
	ctx = r.nsCtx(ctx)
	resp, err := r.client.TaskService().Metrics(ctx, &tasksapi.MetricsRequest{Filters: []string{"id==" + id}})
	if err != nil {
		return usage.Sample{}, convertErr(err)
	}
	if len(resp.Metrics) == 0 || resp.Metrics[0].Data == nil {
		return usage.Sample{}, fmt.Errorf("no task metrics for %q: %w", id, errdefs.ErrNotFound)
	}
	v, err := typeurl.UnmarshalAny(resp.Metrics[0].Data)
	if err != nil {
		return usage.Sample{}, fmt.Errorf("task metrics of %q: %w", id, err)
	}
	var s usage.Sample
	switch m := v.(type) {
	case *cgroup1stats.Metrics:
		s.CPUNanos = m.GetCPU().GetUsage().GetTotal()
		s.MemoryBytes = m.GetMemory().GetUsage().GetUsage()
		s.MemoryPeakBytes = m.GetMemory().GetUsage().GetMax()
	case *cgroup2stats.Metrics:
		s.CPUNanos = m.GetCPU().GetUsageUsec() * 1000
		s.MemoryBytes = m.GetMemory().GetUsage()
		s.MemoryPeakBytes = m.GetMemory().GetMaxUsage()
	default:
		return usage.Sample{}, fmt.Errorf("task metrics of %q: unknown type %T", id, v)
	}
	info, err := r.client.ContainerService().Get(ctx, id)
	if err != nil {
		return usage.Sample{}, convertErr(err)
	}
	if ns := info.Labels[runtime.LabelNetNS]; ns != "" {
		if s.NetRxBytes, s.NetTxBytes, err = network.InterfaceCounters(ns, "eth0"); err != nil {
			return usage.Sample{}, fmt.Errorf("traffic of %q: %w", id, err)
		}
		s.Net = true
	}
	return s, nil
}
