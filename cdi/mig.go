package cdi

import (
	"fmt"
	"strings"

	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/gpu"
)

// migCapsDir is where the NVIDIA driver's nvidia-caps nodes live: a MIG
// device is opened through its parent's /dev/nvidiaN and the access nodes
// of its GPU instance and compute instance here.
const migCapsDir = "/dev/nvidia-caps/"

// migInventory is the part of an Inventory that lists rentable MIG devices
// (gpu.Inventory with MIG_RENTALS). Without it no MIG device is injected.
type migInventory interface {
	MIGDevices() []gpu.MIGDevice
}

// migParentMinors maps each MIG device the inventory rents to its parent
// GPU's minor number.
func migParentMinors(inv Inventory) map[string]int {
	mi, ok := inv.(migInventory)
	if !ok || inv == nil {
		return nil
	}
	parents := map[string]int{}
	for _, g := range inv.GPUs() {
		parents[g.UUID] = g.MinorNumber
	}
	out := map[string]int{}
	for _, m := range mi.MIGDevices() {
		if minor, ok := parents[m.ParentUUID]; ok {
			out[m.UUID] = minor
		}
	}
	return out
}

// migProblems verifies the MIG devices among devs before they are injected:
// each must be a MIG device the inventory rents, and its edits must add
// exactly one GPU node (its parent's, whose minor staleProblems checks
// against NVML) and otherwise only nvidia-caps nodes that no other device
// of the class adds: a MIG device's access nodes are its own. It also
// returns the parent GPU nodes of the verified MIG devices, which their
// sibling MIG devices (and a whole-GPU entry of the parent) legitimately
// add too.
func migProblems(devs, class []*cdilib.Device, inv Inventory) (problems []string, parents nodeSet) {
	parents = newNodeSet()
	minors := migParentMinors(inv)
	for _, dev := range devs {
		if !gpu.IsMIGUUID(dev.Name) {
			continue
		}
		name := dev.GetQualifiedName()
		if _, ok := minors[dev.Name]; !ok {
			problems = append(problems, fmt.Sprintf("%s: MIG device %s is not rented by this host (MIG_RENTALS off, or no such MIG device)", name, dev.Name))
			continue
		}
		own := newNodeSet()
		gpuNodes := newNodeSet()
		gpuNodes.addGPUNodes(&dev.ContainerEdits)
		var caps []string
		for _, n := range dev.ContainerEdits.DeviceNodes {
			if n == nil {
				continue
			}
			if _, isGPU := gpuNodes.byPath[n.Path]; isGPU {
				continue
			}
			if !strings.HasPrefix(n.Path, migCapsDir) {
				problems = append(problems, fmt.Sprintf("%s adds device node %s, which is neither its parent GPU's node nor an nvidia-caps node", name, n.Path))
				continue
			}
			caps = append(caps, n.Path)
			own.addEdits(&cdispec.ContainerEdits{DeviceNodes: []*cdispec.DeviceNode{n}}, name)
		}
		if len(gpuNodes.byPath) != 1 {
			problems = append(problems, fmt.Sprintf("%s adds %d GPU nodes, a MIG device exactly one (its parent's)", name, len(gpuNodes.byPath)))
		}
		if len(caps) == 0 {
			problems = append(problems, fmt.Sprintf("%s adds no nvidia-caps node: a MIG device needs its GPU and compute instance's access nodes", name))
		}
		for _, other := range class {
			if other.GetQualifiedName() == name {
				continue
			}
			theirs := newNodeSet()
			theirs.addEdits(&other.ContainerEdits, other.GetQualifiedName())
			for path := range own.byPath {
				if _, ok := theirs.byPath[path]; ok {
					problems = append(problems, fmt.Sprintf("%s adds nvidia-caps node %s, which %s adds too", name, path, other.GetQualifiedName()))
				}
			}
			for id := range own.byID {
				if _, ok := theirs.byID[id]; ok {
					problems = append(problems, fmt.Sprintf("%s adds nvidia-caps node %s, which %s adds too", name, id, other.GetQualifiedName()))
				}
			}
		}
		parents.merge(gpuNodes)
	}
	return problems, parents
}
