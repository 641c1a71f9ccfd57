package reporter

import (
	"context"
	"time"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
)

// snapshot is the host's state at one moment, read for one heartbeat.
type snapshot struct {
	// instances is nil when listing failed, with listErr set.
	instances   []runtime.Instance
	listErr     error
	usage       []gpu.Usage
	gpus        []gpu.GPU
	freeSets    []gpu.BestFree
	migFree     map[string]int
	fingerprint string
}

func (r *Reporter) snapshot(ctx context.Context) snapshot {
	var s snapshot
	if r.opts.GPUs != nil {
		// Usage first: sampling is what finds a GPU that fell off the bus,
		// and the fingerprint below should already see it.
		s.usage = r.opts.GPUs.Usages()
		s.gpus = r.opts.GPUs.GPUs()
		if len(s.gpus) > 0 {
			s.freeSets = r.opts.GPUs.BestFree()
		}
		if m, ok := r.opts.GPUs.(migLister); ok {
			s.migFree = migFree(m.MIGDevices())
		}
	}
	s.fingerprint = inventoryFingerprint(s.gpus)
	listCtx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	defer cancel()
	s.instances, s.listErr = r.opts.Runtime.List(listCtx)
	if s.listErr != nil {
		s.instances = nil
		r.logger.Warn("listing instances for the heartbeat failed; reporting them as unknown", "error", s.listErr)
	} else if s.instances == nil {
		s.instances = []runtime.Instance{}
	}
	return s
}

// heldGPUs maps instance IDs to the GPUs the inventory says they hold.
func heldGPUs(gpus []gpu.GPU) map[string][]GPURef {
	held := map[string][]GPURef{}
	for _, g := range gpus {
		if g.HeldBy != "" {
			held[g.HeldBy] = append(held[g.HeldBy], GPURef{Index: g.Index, UUID: g.UUID})
		}
	}
	return held
}

// gpusOf lists the GPUs inst holds: those recorded in its container's
// labels, or, for a back end that does not record them, those the allocation
// table (rebuilt from the labels after a restart) names.
func gpusOf(inst runtime.Instance, held map[string][]GPURef) []GPURef {
	if len(inst.GPUs) == 0 {
		return held[inst.ID]
	}
	out := make([]GPURef, len(inst.GPUs))
	for i, g := range inst.GPUs {
		out[i] = GPURef{Index: g.Index, UUID: g.UUID}
	}
	return out
}

func instanceState(inst runtime.Instance, held map[string][]GPURef) InstanceState {
	return InstanceState{
		InstanceID:     inst.ID,
		ContainerID:    inst.ContainerID,
		Status:         string(inst.Status),
		ExitCode:       inst.ExitCode,
		OOMKilled:      inst.OOMKilled,
		Reason:         inst.ExitReason,
		DiskLimitBytes: inst.DiskLimit(),
		Image:          inst.Image,
		SpecHash:       inst.SpecHash,
		GPUs:           nonNil(gpusOf(inst, held)),
		Ports:          nonNil(inst.Ports),
		CreatedAt:      timePtr(inst.CreatedAt),
		StartedAt:      timePtr(inst.StartedAt),
		FinishedAt:     timePtr(inst.FinishedAt),
	}
}

// timePtr omits unset times, which JSON would otherwise show as year 1.
func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// nonNil makes empty lists encode as [] rather than null, which the
// protocol reserves for "unknown".
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
