package gpu

import (
	"fmt"
	"log/slog"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/containerd/errdefs"
)

// Usage is how busy a GPU is at one moment, for heartbeats. Values NVML does
// not support on this GPU are zero.
type Usage struct {
	Index int    `json:"index"`
	UUID  string `json:"uuid"`
	// UtilizationPercent is the share of the last sample period in which a
	// kernel was running; MemoryUtilizationPercent the same for memory reads
	// and writes.
	UtilizationPercent       int     `json:"utilization_percent"`
	MemoryUtilizationPercent int     `json:"memory_utilization_percent"`
	MemoryUsedMiB            uint64  `json:"memory_used_mib"`
	MemoryUsedBytes          uint64  `json:"memory_used_bytes"`
	TemperatureC             int     `json:"temperature_c"`
	PowerWatts               float64 `json:"power_watts"`
}

// Usage samples one GPU, named by UUID or index. A GPU found lost while
// sampling is marked unhealthy ("gpu lost") and its snapshot is returned with
// what could be read, so one dead GPU does not fail a whole heartbeat.
func (inv *Inventory) Usage(id string) (Usage, error) {
	g, ok := inv.lookup(id)
	if !ok {
		return Usage{}, errdefs.ErrNotFound.WithMessage(fmt.Sprintf("unknown GPU %q", id))
	}
	return inv.sample(g), nil
}

// Usages samples every GPU, ordered by index.
func (inv *Inventory) Usages() []Usage {
	out := make([]Usage, len(inv.gpus))
	for i, g := range inv.gpus {
		out[i] = inv.sample(g)
	}
	return out
}

func (inv *Inventory) sample(g *gpuState) Usage {
	u := Usage{Index: g.info.Index, UUID: g.info.UUID}
	// Debug, not Warn: this runs on every heartbeat, and a field that
	// fails once fails every time.
	p := &probe{logger: inv.logger.With("gpu", g.info.UUID), level: slog.LevelDebug}
	dev := g.dev

	if v, ok := query(p, "utilization", dev.GetUtilizationRates); ok {
		u.UtilizationPercent = int(v.Gpu)
		u.MemoryUtilizationPercent = int(v.Memory)
	}
	if v, ok := query(p, "memory", dev.GetMemoryInfo); ok {
		u.MemoryUsedBytes = v.Used
		u.MemoryUsedMiB = v.Used / (1 << 20)
	}
	if v, ok := query(p, "temperature", func() (uint32, nvml.Return) {
		return dev.GetTemperature(nvml.TEMPERATURE_GPU)
	}); ok {
		u.TemperatureC = int(v)
	}
	if v, ok := query(p, "power usage", dev.GetPowerUsage); ok {
		u.PowerWatts = float64(v) / 1000 // NVML reports milliwatts
	}
	if p.lost {
		inv.markUnhealthy(g, ReasonGPULost)
	}
	return u
}
