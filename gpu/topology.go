package gpu

import (
	"log/slog"
	"slices"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Link is how two GPUs are connected, named as `nvidia-smi topo -m` names
// it. From best to worst: NV, PIX, PXB, PHB, NODE, SYS.
type Link string

// Link classes.
const (
	// LinkSelf is a GPU's link to itself, the matrix's diagonal.
	LinkSelf Link = "X"
	// LinkNVLink is NVLink, directly or through NVSwitch.
	LinkNVLink Link = "NV"
	// LinkPIX is one PCIe switch.
	LinkPIX Link = "PIX"
	// LinkPXB is several PCIe switches, without a host bridge.
	LinkPXB Link = "PXB"
	// LinkPHB is one PCIe host bridge (root complex).
	LinkPHB Link = "PHB"
	// LinkNODE is one NUMA node, across host bridges.
	LinkNODE Link = "NODE"
	// LinkSYS crosses sockets (the SMP interconnect). An unknown link
	// counts as SYS: the allocator assumes the worst.
	LinkSYS Link = "SYS"
)

// pairLink is what the inventory knows of two GPUs' connection.
type pairLink struct {
	nvlink bool
	pcie   Link // PIX … SYS
}

// class is the link as the matrix shows it: NV over whatever PCIe path.
func (p pairLink) class() Link {
	if p.nvlink {
		return LinkNVLink
	}
	return p.pcie
}

// rank orders links, lower is better: any NVLink beats any PCIe path, and
// among NVLinked GPUs the shorter PCIe path (the same socket) wins, because
// the CPU side of a rental still goes over it.
func (p pairLink) rank() int {
	r := pcieRank(p.pcie)
	if !p.nvlink {
		r += 10
	}
	return r
}

func pcieRank(l Link) int {
	switch l {
	case LinkPIX:
		return 1
	case LinkPXB:
		return 2
	case LinkPHB:
		return 3
	case LinkNODE:
		return 4
	default:
		return 5
	}
}

// linkOfRank is the class of the worst pair of a set whose worst rank is r.
func linkOfRank(r int) Link {
	if r < 10 {
		return LinkNVLink
	}
	switch r - 10 {
	case 1:
		return LinkPIX
	case 2:
		return LinkPXB
	case 3:
		return LinkPHB
	case 4:
		return LinkNODE
	default:
		return LinkSYS
	}
}

func pcieLink(level nvml.GpuTopologyLevel) Link {
	switch level {
	case nvml.TOPOLOGY_INTERNAL, nvml.TOPOLOGY_SINGLE:
		return LinkPIX
	case nvml.TOPOLOGY_MULTIPLE:
		return LinkPXB
	case nvml.TOPOLOGY_HOSTBRIDGE:
		return LinkPHB
	case nvml.TOPOLOGY_NODE:
		return LinkNODE
	default:
		return LinkSYS
	}
}

// readTopology asks NVML how every pair of GPUs is connected and on which
// NUMA node each GPU sits. NVLink is read as NVML's NVLink peer-to-peer
// status, which is OK through NVSwitch as well as over direct links (a
// link's remote end is the switch on NVSwitch machines, so counting links
// to the peer would miss it). What NVML cannot say is left as the worst
// case: SYS and NUMA node -1.
func (inv *Inventory) readTopology() {
	n := len(inv.gpus)
	inv.links = make([][]pairLink, n)
	for i := range inv.links {
		inv.links[i] = make([]pairLink, n)
	}
	for i, g := range inv.gpus {
		g.pos = i
		p := &probe{logger: inv.logger.With("gpu", g.info.UUID), level: slog.LevelDebug}
		g.info.NUMANode = -1
		if v, ok := query(p, "NUMA node", g.dev.GetNumaNodeId); ok {
			g.info.NUMANode = v
		}
		for j := i + 1; j < n; j++ {
			other := inv.gpus[j].dev
			l := pairLink{pcie: LinkSYS}
			if v, ok := query(p, "topology", func() (nvml.GpuTopologyLevel, nvml.Return) {
				return g.dev.GetTopologyCommonAncestor(other)
			}); ok {
				l.pcie = pcieLink(v)
			}
			if v, ok := query(p, "NVLink P2P status", func() (nvml.GpuP2PStatus, nvml.Return) {
				return g.dev.GetP2PStatus(other, nvml.P2P_CAPS_INDEX_NVLINK)
			}); ok && v == nvml.P2P_STATUS_OK {
				l.nvlink = true
			}
			inv.links[i][j], inv.links[j][i] = l, l
		}
	}
	for i := range n {
		for j := range n {
			if i != j {
				if r := inv.links[i][j].rank(); !slices.Contains(inv.ranks, r) {
					inv.ranks = append(inv.ranks, r)
				}
			}
		}
	}
	slices.Sort(inv.ranks)
}

// NUMANodeOf is the NUMA node of the GPU with uuid, -1 when unknown or when
// no such GPU is in the inventory.
func (inv *Inventory) NUMANodeOf(uuid string) int {
	if g, ok := inv.byUUID[uuid]; ok {
		return g.info.NUMANode
	}
	if m, ok := inv.byMIG[uuid]; ok {
		return m.info.NUMANode
	}
	return -1
}

// Topology is the host's GPU interconnect, as `nvidia-smi topo -m` shows it.
type Topology struct {
	// GPUs are the NVML indexes of the matrix's rows and columns.
	GPUs []int `json:"gpus"`
	// Links[i][j] is the link between GPUs[i] and GPUs[j]: X on the
	// diagonal, else NV, PIX, PXB, PHB, NODE or SYS.
	Links [][]Link `json:"links"`
	// NUMANodes[i] is GPUs[i]'s NUMA node, -1 where unknown.
	NUMANodes []int `json:"numa_nodes"`
}

// Topology returns the interconnect matrix of every GPU in the inventory.
func (inv *Inventory) Topology() Topology {
	t := Topology{GPUs: []int{}, Links: [][]Link{}, NUMANodes: []int{}}
	for i, g := range inv.gpus {
		t.GPUs = append(t.GPUs, g.info.Index)
		t.NUMANodes = append(t.NUMANodes, g.info.NUMANode)
		row := make([]Link, len(inv.gpus))
		for j := range inv.gpus {
			if i == j {
				row[j] = LinkSelf
			} else {
				row[j] = inv.links[i][j].class()
			}
		}
		t.Links = append(t.Links, row)
	}
	return t
}
