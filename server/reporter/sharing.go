package reporter

import "github.com/host-agent/host-agent/runtime/share"

// Sharing reads how the host's memory and CPUs are divided among rentals;
// *share.Reservations provides it.
type Sharing interface {
	Usage() share.Usage
}

var _ Sharing = (*share.Reservations)(nil)

// ResourcesInfo is what the host allocates to rentals and how much of it
// they hold, as the host report and the heartbeat carry it.
type ResourcesInfo struct {
	// AllocatableMemoryMB and AllocatableCPUs are the host's, less what is
	// kept for the system (HOST_RESERVED_MEMORY_MB, HOST_RESERVED_CPUS).
	AllocatableMemoryMB int64   `json:"allocatable_memory_mb"`
	AllocatableCPUs     float64 `json:"allocatable_cpus"`
	// AllocatedMemoryMB and AllocatedCPUs are the rentals' limits summed.
	AllocatedMemoryMB int64   `json:"allocated_memory_mb"`
	AllocatedCPUs     float64 `json:"allocated_cpus"`
}

func (r *Reporter) resourcesInfo() *ResourcesInfo {
	if r.opts.Sharing == nil {
		return nil
	}
	u := r.opts.Sharing.Usage()
	return &ResourcesInfo{
		AllocatableMemoryMB: u.AllocatableMemoryMB,
		AllocatableCPUs:     u.AllocatableCPUs,
		AllocatedMemoryMB:   u.AllocatedMemoryMB,
		AllocatedCPUs:       u.AllocatedCPUs,
	}
}
