package cdi

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
)

// The NVIDIA driver's fixed character major: /dev/nvidiaN is 195:N, and
// 195:254 and 195:255 are the shared nvidia-modeset and nvidiactl nodes
// every GPU container needs.
const (
	nvidiaMajor       = 195
	nvidiaFirstShared = 254
)

// gpuNodePath matches the per-GPU device nodes the NVIDIA driver creates.
var gpuNodePath = regexp.MustCompile(`^/dev/nvidia[0-9]+$`)

// nodeID is a device node's identity: what the kernel and the device
// cgroup go by, whatever path the node has in the container.
type nodeID struct {
	typ          string // "c" or "b"
	major, minor int64
}

func (id nodeID) String() string { return fmt.Sprintf("%s %d:%d", id.typ, id.major, id.minor) }

// nodeSet is a set of device nodes, each remembered with the CDI device that
// adds it, known by container path and, where it can be told, by identity.
type nodeSet struct {
	byPath map[string]string
	byID   map[nodeID]string
}

func newNodeSet() nodeSet {
	return nodeSet{byPath: map[string]string{}, byID: map[nodeID]string{}}
}

func (s nodeSet) addEdits(e *cdispec.ContainerEdits, owner string) {
	for _, n := range e.DeviceNodes {
		if n == nil {
			continue
		}
		s.byPath[n.Path] = owner
		if id, ok := nodeIDOf(n); ok {
			s.byID[id] = owner
		}
	}
}

// intersect keeps only the nodes o has too.
func (s nodeSet) intersect(o nodeSet) {
	for p := range s.byPath {
		if _, ok := o.byPath[p]; !ok {
			delete(s.byPath, p)
		}
	}
	for id := range s.byID {
		if _, ok := o.byID[id]; !ok {
			delete(s.byID, id)
		}
	}
}

// merge adds o's nodes that s lacks.
func (s nodeSet) merge(o nodeSet) {
	for p, owner := range o.byPath {
		if _, ok := s.byPath[p]; !ok {
			s.byPath[p] = owner
		}
	}
	for id, owner := range o.byID {
		if _, ok := s.byID[id]; !ok {
			s.byID[id] = owner
		}
	}
}

// foreignNodes are the device nodes that belong to GPUs not being injected:
//
//   - every node of every other GPU's device (named by a UUID, the one the
//     cache resolves that name to), even when an injected device adds it
//     too: no two whole GPUs share a node, so an injected device that adds
//     one of another GPU's nodes is handing that GPU out;
//   - nodes of every other device of the class ("all", an index name, or a
//     copy shadowed by a higher-priority spec) that no injected device adds:
//     such aliases legitimately repeat the injected GPUs' nodes;
//   - less the nodes every GPU device adds (say, /dev/nvidiactl repeated in
//     each device rather than in the spec-level edits), which are nobody's
//     GPU in particular. A GPU node (/dev/nvidiaN, c 195:N) is never one of
//     them, however many devices add it: it is one GPU's, and a spec whose
//     devices all add it would otherwise hand that GPU to every tenant.
func foreignNodes(class []*cdilib.Device, injected map[*cdilib.Device]bool, allocated nodeSet) nodeSet {
	effective := effectiveDevices(class)
	injectedNames := map[string]bool{}
	for d := range injected {
		injectedNames[d.GetQualifiedName()] = true
	}
	foreign, aliases, gpuNodes := newNodeSet(), newNodeSet(), newNodeSet()
	var shared *nodeSet
	gpus := 0
	for _, d := range class {
		own := newNodeSet()
		own.addEdits(&d.ContainerEdits, d.GetQualifiedName())
		gpuNodes.addGPUNodes(&d.ContainerEdits)
		isGPU := effective[d] && gpu.IsGPUUUID(d.Name)
		if isGPU {
			gpus++
			if shared == nil {
				shared = &own
			} else {
				shared.intersect(own)
			}
		}
		switch {
		case injected[d]:
		case isGPU && !injectedNames[d.GetQualifiedName()]:
			foreign.merge(own)
		default:
			aliases.merge(own)
		}
	}
	aliases.subtract(allocated)
	foreign.merge(aliases)
	// With one GPU the intersection is all of its nodes, which would
	// excuse them all; nothing is shared then.
	if gpus >= 2 {
		shared.subtract(gpuNodes)
		foreign.subtract(*shared)
	}
	return foreign
}

// addGPUNodes adds the per-GPU nodes among e's: those at a /dev/nvidiaN path
// or numbered c 195:N, each by path and, where it can be told, by identity.
func (s nodeSet) addGPUNodes(e *cdispec.ContainerEdits) {
	for _, n := range e.DeviceNodes {
		if n == nil {
			continue
		}
		id, ok := nodeIDOf(n)
		if gpuNodePath.MatchString(n.Path) || (ok && isGPUMinor(id)) {
			s.byPath[n.Path] = ""
			if ok {
				s.byID[id] = ""
			}
		}
	}
}

// subtract removes o's nodes.
func (s nodeSet) subtract(o nodeSet) {
	for p := range o.byPath {
		delete(s.byPath, p)
	}
	for id := range o.byID {
		delete(s.byID, id)
	}
}

// nodeIDOf works out the identity the CDI library will give n when it is
// injected: the spec's type and numbers when it gives them, otherwise those
// of the host node.
func nodeIDOf(n *cdispec.DeviceNode) (nodeID, bool) {
	id := nodeID{typ: n.Type, major: n.Major, minor: n.Minor}
	minimal := n.Type != "" && (n.Major != 0 || n.Type == "p")
	if !minimal {
		host := n.HostPath
		if host == "" {
			host = n.Path
		}
		var st unix.Stat_t
		if err := unix.Lstat(host, &st); err != nil {
			return nodeID{}, false
		}
		var typ string
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			typ = "c"
		case unix.S_IFBLK:
			typ = "b"
		default:
			return nodeID{}, false
		}
		if id.typ == "" {
			id.typ = typ
		}
		if id.major == 0 {
			id.major, id.minor = int64(unix.Major(uint64(st.Rdev))), int64(unix.Minor(uint64(st.Rdev))) // Rdev is uint32 on some platforms
		}
	}
	if id.typ == "u" {
		id.typ = "c"
	}
	if id.typ != "c" && id.typ != "b" {
		return nodeID{}, false
	}
	return id, true
}

func ociNodeID(d specs.LinuxDevice) nodeID {
	typ := d.Type
	if typ == "u" {
		typ = "c"
	}
	return nodeID{typ: typ, major: d.Major, minor: d.Minor}
}

// verify refuses a finished spec that gives the container a GPU it was not
// allocated, or lacks one it was: it runs inside the option, after the
// edits, on whatever the spec holds by then, so it also catches a spec
// file whose device A quietly adds device B's node and a device added by
// an earlier option. Besides the nodes CDI specs name, any /dev/nvidiaN or
// c 195:N node (N < 254) that no injected device adds is refused, which
// holds even on a host with no spec at all.
func (p *plan) verify(s *oci.Spec) error {
	var problems []string
	var devices []specs.LinuxDevice
	if s.Linux != nil {
		devices = s.Linux.Devices
	}
	present := map[string]bool{}
	allocatedMinors := map[int64]bool{}
	for id := range p.allocated.byID {
		if id.typ == "c" && id.major == nvidiaMajor {
			allocatedMinors[id.minor] = true
		}
	}

	for _, d := range devices {
		present[d.Path] = true
		id := ociNodeID(d)
		if owner, ok := p.foreign.byPath[d.Path]; ok {
			problems = append(problems, fmt.Sprintf("device node %s belongs to %s", d.Path, owner))
			continue
		}
		if owner, ok := p.foreign.byID[id]; ok {
			problems = append(problems, fmt.Sprintf("device node %s (%s) is the node of %s", d.Path, id, owner))
			continue
		}
		_, allocatedPath := p.allocated.byPath[d.Path]
		_, allocatedID := p.allocated.byID[id]
		if gpuNodePath.MatchString(d.Path) && !allocatedPath {
			problems = append(problems, fmt.Sprintf("device node %s is an NVIDIA GPU node no allocated GPU adds", d.Path))
			continue
		}
		if isGPUMinor(id) && !allocatedID {
			problems = append(problems, fmt.Sprintf("device node %s (%s) is an NVIDIA GPU no allocated GPU adds", d.Path, id))
		}
	}
	for path, owner := range p.allocated.byPath {
		if !present[path] {
			problems = append(problems, fmt.Sprintf("device node %s of allocated %s is missing", path, owner))
		}
	}
	if s.Linux != nil && s.Linux.Resources != nil {
		for _, rule := range s.Linux.Resources.Devices {
			if !rule.Allow {
				continue
			}
			for id, owner := range p.foreign.byID {
				if ruleCovers(rule, id) {
					problems = append(problems, fmt.Sprintf("device cgroup allows %s, the node of %s", id, owner))
				}
			}
			if ruleCoversOtherGPU(rule, allocatedMinors) {
				problems = append(problems, fmt.Sprintf("device cgroup rule %s allows an NVIDIA GPU that is not allocated", runtime.DescribeDeviceRule(rule)))
			}
		}
	}
	if len(problems) == 0 {
		return nil
	}
	slices.Sort(problems)
	return fmt.Errorf("%w: refusing GPU injection of [%s]: %s", errdefs.ErrFailedPrecondition,
		strings.Join(p.names, " "), strings.Join(slices.Compact(problems), "; "))
}

// gpuNodeProblems refuses edits that add more per-GPU nodes than they
// should: a whole-GPU device adds exactly one, spec-level edits (which every
// container of the spec gets) none. This catches a spec that hands out an
// extra GPU even when no other device in the cache names that GPU.
func gpuNodeProblems(e *cdispec.ContainerEdits, where string, limit int) []string {
	var gpuNodes []string
	for _, n := range e.DeviceNodes {
		if n == nil {
			continue
		}
		id, ok := nodeIDOf(n)
		if gpuNodePath.MatchString(n.Path) || (ok && isGPUMinor(id)) {
			gpuNodes = append(gpuNodes, n.Path)
		}
	}
	if len(gpuNodes) <= limit {
		return nil
	}
	return []string{fmt.Sprintf("%s adds %d NVIDIA GPU nodes (%s), at most %d allowed",
		where, len(gpuNodes), strings.Join(gpuNodes, " "), limit)}
}

func isGPUMinor(id nodeID) bool {
	return id.typ == "c" && id.major == nvidiaMajor && id.minor < nvidiaFirstShared
}

// ruleCovers reports whether an allow rule of the device cgroup lets the
// container open id.
func ruleCovers(rule specs.LinuxDeviceCgroup, id nodeID) bool {
	if rule.Type != "" && rule.Type != "a" && rule.Type != id.typ {
		return false
	}
	if rule.Major != nil && *rule.Major != id.major {
		return false
	}
	return rule.Minor == nil || *rule.Minor == id.minor
}

// ruleCoversOtherGPU reports whether an allow rule opens a /dev/nvidiaN
// whose minor is not among the allocated ones, wildcards included.
func ruleCoversOtherGPU(rule specs.LinuxDeviceCgroup, allocatedMinors map[int64]bool) bool {
	if rule.Type != "" && rule.Type != "a" && rule.Type != "c" {
		return false
	}
	if rule.Major != nil && *rule.Major != nvidiaMajor {
		return false
	}
	if rule.Minor == nil {
		return true
	}
	return *rule.Minor < nvidiaFirstShared && !allocatedMinors[*rule.Minor]
}
