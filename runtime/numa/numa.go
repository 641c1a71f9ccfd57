// Package numa keeps a GPU rental's CPUs and memory on its GPUs' NUMA node:
// a rental whose GPUs all sit on one node gets that node's CPUs (cpuset)
// and memory (cpuset mems) when its share fits in what the node has left,
// so that the host-to-GPU copies and the data loader do not cross sockets.
// Its Reservations are a runtime.ReservationKind: what each rental takes of
// a node is recorded in its labels and rebuilt at restart like the GPUs.
// internal/agent builds it, after the share kind that sizes the rental.
package numa

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/host-agent/host-agent/runtime"
)

// Labels recording an aligned rental: its node, and the CPUs and memory it
// takes of it.
const (
	LabelNode     = runtime.LabelPrefix + "numa.node"
	LabelCPUs     = runtime.LabelPrefix + "numa.cpus"
	LabelMemoryMB = runtime.LabelPrefix + "numa.memory-mb"
)

// Node is one NUMA node of the host.
type Node struct {
	ID int
	// CPUList is the node's CPUs as the kernel writes them ("0-15,32-47").
	CPUList  string
	CPUs     int
	MemoryMB int64
	// Mems are the memory nodes an aligned rental gets (cpuset.mems);
	// empty means the node itself. Overlay sets it.
	Mems string
}

// mems is what an aligned rental's cpuset.mems is.
func (n Node) mems() string {
	if n.Mems != "" {
		return n.Mems
	}
	return strconv.Itoa(n.ID)
}

// ReadNodes reads the host's NUMA nodes under sysRoot (normally "/sys").
// A host without /sys/devices/system/node has none.
func ReadNodes(sysRoot string) ([]Node, error) {
	dirs, err := filepath.Glob(filepath.Join(sysRoot, "devices/system/node/node[0-9]*"))
	if err != nil {
		return nil, err
	}
	var out []Node
	for _, d := range dirs {
		id, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "node"))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "cpulist"))
		if err != nil {
			return nil, err
		}
		n := Node{ID: id, CPUList: strings.TrimSpace(string(b))}
		if n.CPUs, err = countCPUs(n.CPUList); err != nil {
			return nil, fmt.Errorf("%s/cpulist: %w", d, err)
		}
		if n.MemoryMB, err = nodeMemoryMB(filepath.Join(d, "meminfo")); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Node) int { return a.ID - b.ID })
	return out, nil
}

// countCPUs counts the CPUs of a kernel CPU list.
func countCPUs(list string) (int, error) {
	n := 0
	for _, part := range strings.Split(list, ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("CPU list %q", list)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, fmt.Errorf("CPU list %q", list)
			}
		}
		n += b - a + 1
	}
	return n, nil
}

// nodeMemoryMB reads "Node N MemTotal: X kB" from a node's meminfo.
func nodeMemoryMB(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[2] == "MemTotal:" {
			kb, err := strconv.ParseInt(f[3], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: MemTotal %q", path, f[3])
			}
			return kb >> 10, nil
		}
	}
	return 0, fmt.Errorf("%s: no MemTotal", path)
}

// hold is what one aligned rental takes of its node.
type hold struct {
	node     int
	cpus     float64
	memoryMB int64
}

// Reservations aligns GPU rentals with their GPUs' NUMA node.
type Reservations struct {
	nodes  map[int]Node
	nodeOf func(gpuUUID string) int // -1: unknown
	logger *slog.Logger

	mu   sync.Mutex
	held map[string]hold
}

var _ runtime.ReservationKind = (*Reservations)(nil)

// New aligns rentals on nodes; nodeOf says which node a GPU is attached
// to (-1 when unknown).
func New(nodes []Node, nodeOf func(gpuUUID string) int, logger *slog.Logger) *Reservations {
	if logger == nil {
		logger = slog.Default()
	}
	r := &Reservations{nodes: map[int]Node{}, nodeOf: nodeOf, logger: logger, held: map[string]hold{}}
	for _, n := range nodes {
		r.nodes[n.ID] = n
	}
	return r
}

// Name implements runtime.ReservationKind.
func (r *Reservations) Name() string { return "numa" }

// Reserve implements runtime.ReservationKind. A rental is aligned when it
// holds GPUs, they all sit on one node the host knows, and its CPUs and
// memory (as the share kind sized them in spec.Limits, else as asked) fit
// in what the other aligned rentals leave of the node. Otherwise it runs
// unpinned, as without alignment, and the reason is logged: alignment is a
// placement preference, never a reason to refuse a rental.
func (r *Reservations) Reserve(spec *runtime.InstanceSpec) (map[string]string, error) {
	if len(spec.GPUs) == 0 {
		return nil, nil
	}
	node := r.nodeOf(spec.GPUs[0].UUID)
	for _, g := range spec.GPUs[1:] {
		if r.nodeOf(g.UUID) != node {
			node = -1
		}
	}
	res := spec.Enforced()
	n, known := r.nodes[node]
	r.mu.Lock()
	defer r.mu.Unlock()
	var usedCPUs float64
	var usedMem int64
	for _, h := range r.held {
		if h.node == node {
			usedCPUs += h.cpus
			usedMem += h.memoryMB
		}
	}
	why := ""
	switch {
	case node < 0 || !known:
		why = "its GPUs are not on one known NUMA node"
	case res.CPUs > float64(n.CPUs)-usedCPUs:
		why = fmt.Sprintf("%g CPUs do not fit in the %g left on node %d", res.CPUs, float64(n.CPUs)-usedCPUs, node)
	case res.MemoryMB > n.MemoryMB-usedMem:
		why = fmt.Sprintf("%d MiB do not fit in the %d MiB left on node %d", res.MemoryMB, n.MemoryMB-usedMem, node)
	}
	if why != "" {
		r.logger.Info("rental not aligned with its GPUs' NUMA node; it runs on any CPU", "instance_id", spec.ID, "why", why)
		return nil, nil
	}
	if spec.Limits == (runtime.Resources{}) {
		spec.Limits = spec.Resources
	}
	spec.Limits.CPUSetCPUs = n.CPUList
	spec.Limits.CPUSetMems = n.mems()
	h := hold{node: node, cpus: res.CPUs, memoryMB: res.MemoryMB}
	r.held[spec.ID] = h
	return h.labels(), nil
}

func (h hold) labels() map[string]string {
	return map[string]string{
		LabelNode:     strconv.Itoa(h.node),
		LabelCPUs:     strconv.FormatFloat(h.cpus, 'g', -1, 64),
		LabelMemoryMB: strconv.FormatInt(h.memoryMB, 10),
	}
}

// Release implements runtime.ReservationKind.
func (r *Reservations) Release(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.held, id)
}

// Restore implements runtime.ReservationKind: an aligned rental's share of
// its node counts again.
func (r *Reservations) Restore(id string, labels map[string]string) error {
	v, ok := labels[LabelNode]
	if !ok {
		return nil
	}
	node, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("label %s=%q: %w", LabelNode, v, err)
	}
	cpus, err := strconv.ParseFloat(labels[LabelCPUs], 64)
	if err != nil {
		return fmt.Errorf("label %s=%q: %w", LabelCPUs, labels[LabelCPUs], err)
	}
	mem, err := strconv.ParseInt(labels[LabelMemoryMB], 10, 64)
	if err != nil {
		return fmt.Errorf("label %s=%q: %w", LabelMemoryMB, labels[LabelMemoryMB], err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held[id] = hold{node: node, cpus: cpus, memoryMB: mem}
	return nil
}

// Holdings implements runtime.ReservationKind.
func (r *Reservations) Holdings() map[string]map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]map[string]string, len(r.held))
	for id, h := range r.held {
		out[id] = h.labels()
	}
	return out
}

// Records implements runtime.ReservationKind.
func (r *Reservations) Records(key string) bool {
	return key == LabelNode || key == LabelCPUs || key == LabelMemoryMB
}
