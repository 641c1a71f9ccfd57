package main

import (
	"fmt"
	"log/slog"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/numa"
)

// numaAlignment is the reservation kind that pins GPU rentals to their
// GPUs' NUMA node, placed after the share kind that sizes them; none with
// NUMA_ALIGN=false or on a host without GPUs or NUMA nodes in sysRoot.
func numaAlignment(cfg config, sysRoot string, inv *gpu.Inventory, logger *slog.Logger) ([]runtime.ReservationKind, error) {
	if !cfg.NUMAAlign || inv.Len() == 0 {
		return nil, nil
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
	return []runtime.ReservationKind{numa.New(nodes, inv.NUMANodeOf, logger)}, nil
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
