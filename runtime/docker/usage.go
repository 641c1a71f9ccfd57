package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime/usage"
)

var _ usage.Sampler = (*Runtime)(nil)

// SampleUsage implements usage.Sampler from the daemon's one-shot stats:
// CPU time and memory of the container's cgroup (max_usage only on cgroup
// v1), traffic of its own interfaces, read inside its network namespace.
func (r *Runtime) SampleUsage(ctx context.Context, id string) (usage.Sample, error) {
	res, err := r.client.ContainerStats(ctx, r.containerName(id), client.ContainerStatsOptions{})
	if err != nil {
		if errdefs.IsNotFound(convertErr(err)) {
			return usage.Sample{}, notFound(id)
		}
		return usage.Sample{}, convertErr(err)
	}
	defer res.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&st); err != nil {
		return usage.Sample{}, fmt.Errorf("stats of %q: %w", id, err)
	}
	if st.Read.IsZero() || st.CPUStats.CPUUsage.TotalUsage == 0 {
		// A container that does not run answers zeros: not a counter
		// that started over.
		return usage.Sample{}, fmt.Errorf("instance %q does not run: %w", id, errdefs.ErrNotFound)
	}
	s := usage.Sample{
		CPUNanos:        st.CPUStats.CPUUsage.TotalUsage,
		MemoryBytes:     st.MemoryStats.Usage,
		MemoryPeakBytes: st.MemoryStats.MaxUsage,
	}
	for _, n := range st.Networks {
		s.Net = true
		s.NetRxBytes += n.RxBytes
		s.NetTxBytes += n.TxBytes
	}
	return s, nil
}
