package agent

import (
	"fmt"
	"log/slog"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/gpualloc"
	"github.com/host-agent/host-agent/runtime/hostinfo"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	"github.com/host-agent/host-agent/runtime/numa"
	"github.com/host-agent/host-agent/runtime/share"
)

// ShareError says that the share options leave nothing for rentals; CPUs
// says whether the CPUs are short rather than the memory.
type ShareError struct {
	CPUs bool
	Err  error
}

func (e *ShareError) Error() string { return e.Err.Error() }
func (e *ShareError) Unwrap() error { return e.Err }

// Kinds are the reservation kinds every start of the agent takes, GPUs
// first: a rental's share of the host follows the GPUs it got, and its
// NUMA node follows its GPUs and its share. Host ports only where the
// agent publishes them; then the disk limits (or the plain reserve),
// volumes, NUMA alignment and, last, the default bandwidth. It also returns the share accounting, which the
// reporter reads.
func Kinds(inv *gpu.Inventory, r Reservations, logger *slog.Logger) ([]runtime.Admission, *share.Reservations, error) {
	if logger == nil {
		logger = slog.Default()
	}
	alloc := r.GPUs
	if alloc == nil {
		alloc = gpu.NewAllocator(inv)
	}
	shares, err := newShares(r.Shares, r.Meminfo, inv.Len())
	if err != nil {
		return nil, nil, err
	}
	kinds := []runtime.Admission{lifecycle.GPUReservations{Alloc: gpualloc.New(alloc)}, shares}
	if r.PublishPorts {
		kinds = append(kinds, lifecycle.PortReservations{Alloc: r.Ports})
	}
	if r.DiskLimits != nil {
		kinds = append(kinds, r.DiskLimits)
	} else {
		kinds = append(kinds, disk.Reserve{Path: r.DiskPath, Bytes: r.DiskReserveBytes})
	}
	if r.Volumes != nil {
		kinds = append(kinds, lifecycle.VolumeReservations{Store: r.Volumes})
	}
	numaKinds, err := numaAlignment(r, inv, logger)
	if err != nil {
		return nil, nil, err
	}
	kinds = append(kinds, numaKinds...)
	// Last: it fills in only what no kind before it did.
	return append(kinds, lifecycle.BandwidthDefaults{Bandwidth: r.Bandwidth}), shares, nil
}

// newShares accounts for this host's memory and CPUs with gpus GPUs.
func newShares(c ShareOptions, meminfo string, gpus int) (*share.Reservations, error) {
	if meminfo == "" {
		meminfo = "/proc/meminfo"
	}
	memMB, err := share.HostMemoryMB(meminfo)
	if err != nil {
		return nil, fmt.Errorf("host memory: %w", err)
	}
	mem, cpus, err := share.Allocatable(memMB, float64(hostinfo.CPUs()), c.ReservedMemoryMB, c.ReservedCPUs)
	if err != nil {
		return nil, &ShareError{CPUs: mem > 0 || memMB > c.ReservedMemoryMB+64, Err: err}
	}
	shm := c.ShmFraction
	if shm == 0 {
		shm = -1
	}
	return share.New(share.Options{MemoryMB: mem, CPUs: cpus, GPUs: gpus,
		CPURentalMemoryMB: c.CPURentalMemoryMB, CPURentalCPUs: c.CPURentalCPUs, Pids: c.Pids, ShmFraction: shm}), nil
}

// numaAlignment is the reservation kind that pins GPU rentals to their
// GPUs' NUMA node, placed after the share kind that sizes them; none
// without NUMAAlign or on a host without GPUs or NUMA nodes.
func numaAlignment(r Reservations, inv *gpu.Inventory, logger *slog.Logger) ([]runtime.Admission, error) {
	if !r.NUMAAlign || inv.Len() == 0 {
		return nil, nil
	}
	sysRoot := r.SysRoot
	if sysRoot == "" {
		sysRoot = "/sys"
	}
	nodes, err := numa.ReadNodes(sysRoot)
	if err != nil {
		return nil, fmt.Errorf("NUMA nodes: %w", err)
	}
	if len(nodes) == 0 {
		logger.Info("the host reports no NUMA nodes; GPU rentals are not pinned to their GPUs' node")
		return nil, nil
	}
	if inv.Mock() != "" {
		if nodes, err = mockNUMANodes(nodes, inv, logger); err != nil {
			return nil, err
		}
	}
	logger.Info("GPU rentals are pinned to their GPUs' NUMA node when their share fits there", "nodes", len(nodes))
	return []runtime.Admission{numa.New(nodes, inv.NUMANodeOf, logger)}, nil
}

// mockNUMANodes lays the mock machine's sockets over the host's CPUs
// (numa.Overlay): a mock GPU host aligns rentals with its mock GPUs' NUMA
// nodes as a real one does, on CPUs and memory nodes this host has.
func mockNUMANodes(host []numa.Node, inv *gpu.Inventory, logger *slog.Logger) ([]numa.Node, error) {
	sockets := 0
	for _, g := range inv.GPUs() {
		sockets = max(sockets, g.NUMANode+1)
	}
	if sockets == 0 {
		return host, nil
	}
	nodes, err := numa.Overlay(host, sockets)
	if err != nil {
		return nil, fmt.Errorf("mock GPU host: NUMA nodes: %w", err)
	}
	for _, n := range nodes {
		logger.Info("mock NUMA node laid over the host's CPUs", "node", n.ID, "cpus", n.CPUList, "mems", n.Mems, "memory_mb", n.MemoryMB)
	}
	return nodes, nil
}
