package numa

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Overlay lays n NUMA nodes over the host's, for a mock GPU host whose
// mock machine has n sockets (GPU_MOCK): the host's CPUs, in order, are
// split into n runs of nearly equal length, each node taking a run, the
// memory nodes those CPUs belong to (Mems) and an equal part of the host's
// memory. Rentals are then aligned with the mock GPUs' sockets exactly as
// on a real machine, on CPUs and memory nodes this host has. It fails when
// the host has fewer CPUs than n or reports no nodes.
func Overlay(host []Node, n int) ([]Node, error) {
	type cpu struct{ id, node int }
	var cpus []cpu
	var memMB int64
	for _, h := range host {
		ids, err := expandCPUs(h.CPUList)
		if err != nil {
			return nil, fmt.Errorf("node %d: %w", h.ID, err)
		}
		for _, id := range ids {
			cpus = append(cpus, cpu{id, h.ID})
		}
		memMB += h.MemoryMB
	}
	if n < 1 || len(cpus) < n {
		return nil, fmt.Errorf("cannot lay %d NUMA nodes over %d CPUs", n, len(cpus))
	}
	slices.SortFunc(cpus, func(a, b cpu) int { return a.id - b.id })
	out := make([]Node, n)
	for i := range n {
		run := cpus[i*len(cpus)/n : (i+1)*len(cpus)/n]
		var ids, mems []int
		for _, c := range run {
			ids = append(ids, c.id)
			if !slices.Contains(mems, c.node) {
				mems = append(mems, c.node)
			}
		}
		slices.Sort(mems)
		out[i] = Node{ID: i, CPUList: formatCPUs(ids), CPUs: len(ids), MemoryMB: memMB / int64(n), Mems: formatCPUs(mems)}
	}
	return out, nil
}

// expandCPUs lists the CPUs of a kernel CPU list ("0-3,8").
func expandCPUs(list string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(list, ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("CPU list %q", list)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("CPU list %q", list)
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	return out, nil
}

// formatCPUs writes sorted, distinct numbers as a kernel list ("0-3,8").
func formatCPUs(ids []int) string {
	var parts []string
	for i := 0; i < len(ids); {
		j := i
		for j+1 < len(ids) && ids[j+1] == ids[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(ids[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", ids[i], ids[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
