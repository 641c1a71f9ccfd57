// Package usage meters what each rental uses, for the platform to bill:
// CPU time, peak memory, traffic, disk and GPU time. Back ends read raw
// counters (Sample); a Meter turns them into figures that only grow for
// the life of the rental, across restarts of the agent and of the
// container runtime, keeping what it has seen under the agent's state
// directory. internal/agent wires it to the API, the heartbeat, the
// instance.exited event and the metrics. It imports runtime and
// runtime/events only.
package usage

import (
	"context"
	"math"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// Usage is what a rental has used since its start; the type is the
// events package's, which carries it in instance.exited.
type Usage = events.Usage

// Sample is one reading of a rental's raw counters. CPU and network
// counters are cumulative for their source (a cgroup, a veth) and start
// again from zero when the source is made anew; the Meter carries them
// over.
type Sample struct {
	CPUNanos uint64
	// MemoryBytes is the memory held now, MemoryPeakBytes the most held
	// since the cgroup was made (0 where the kernel does not say).
	MemoryBytes     uint64
	MemoryPeakBytes uint64
	// Net says that the network counters were read (a rental without a
	// network has none).
	Net        bool
	NetRxBytes uint64
	NetTxBytes uint64
}

// Sampler is a back end that reads a running rental's counters. It
// answers NotFound (errdefs) when the rental has no running task.
type Sampler interface {
	SampleUsage(ctx context.Context, id string) (Sample, error)
}

// gpuSeconds is the GPU time inst has held so far: its GPUs times the
// seconds from its start to its exit (to now while it runs).
func gpuSeconds(inst runtime.Instance, now func() float64) float64 {
	if len(inst.GPUs) == 0 || inst.StartedAt.IsZero() {
		return 0
	}
	end := now()
	if !inst.FinishedAt.IsZero() {
		end = float64(inst.FinishedAt.UnixNano()) / 1e9
	}
	secs := end - float64(inst.StartedAt.UnixNano())/1e9
	if secs <= 0 {
		return 0
	}
	return math.Round(float64(len(inst.GPUs))*secs*1000) / 1000
}
