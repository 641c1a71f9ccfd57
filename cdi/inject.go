package cdi

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
)

// visibleDevicesEnv is what the legacy NVIDIA runtime and hook read to pick
// the GPUs they mount.
const visibleDevicesEnv = "NVIDIA_VISIBLE_DEVICES"

// SpecOpts returns the option that gives a container exactly the GPUs with
// these UUIDs (e.g. "GPU-5e2c…"), and no other. The runtime must apply it
// after all its other options, so that nothing later resets the env, mounts
// or devices it sets, and before its own final checks.
//
// SpecOpts rereads the spec directories and resolves every GPU as
// nvidia.com/gpu=<UUID>, so a GPU is never named "all" or by index. It fails
// with InvalidArgument for an ID that is not a GPU UUID, and with
// FailedPrecondition for a GPU no spec defines, for a spec whose hooks break
// the hook policy and for a device that adds more than its own GPU node (each
// named in the error). The option applies a snapshot of the checked edits,
// so a spec file changed in between cannot slip in.
//
// After applying them the option verifies the spec and fails with
// FailedPrecondition unless it holds the device node of every allocated GPU
// and none of another GPU: no node that another GPU's CDI device adds, by
// container path or by device number, no /dev/nvidiaN or c 195:N node and
// no device cgroup rule opening one that the allocated devices do not add.
//
// An empty uuids list is valid, for a CPU-only container: the option injects
// nothing and still enforces the rule above.
//
// Whatever the list, the option sets NVIDIA_VISIBLE_DEVICES=void and drops
// cdi.k8s.io/ annotations, so that an image or request asking for
// NVIDIA_VISIBLE_DEVICES=all or NVIDIA_DRIVER_CAPABILITIES changes nothing
// (see withoutLegacyRequests). CUDA_VISIBLE_DEVICES is left alone: it only
// selects among the devices the container already has.
func (in *Injector) SpecOpts(uuids []string) (oci.SpecOpts, error) {
	p, dp, err := in.checkedPlan(uuids)
	if err != nil {
		return nil, err
	}
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s == nil {
			return fmt.Errorf("%w: no OCI spec to inject GPUs into", errdefs.ErrInvalidArgument)
		}
		withoutLegacyRequests(s)
		if err := dp.Apply(s); err != nil {
			return err
		}
		setVisibleDevicesVoid(s)
		if err := p.verify(s); err != nil {
			return err
		}
		return dp.Verify(s)
	}, nil
}

// Plan is the device plan that gives a container exactly the GPUs with
// these UUIDs, checked as SpecOpts describes, for a back end to apply last
// (DevicePlan.Apply) and check against the final spec (DevicePlan.Verify).
// Besides the hook policy it refuses, naming each: device nodes that are
// block devices or not the NVIDIA driver's, mounts that are not read-only
// bind mounts of a root-owned regular file (sockets, directories), network
// devices, extra groups, spec files or directories that anyone but root
// can write, a GPU whose node's minor is not the one NVML gives it, and a
// spec made for another driver. A stale spec is regenerated once when the
// Injector was configured with NVML.
//
// The plan sets NVIDIA_VISIBLE_DEVICES=void last; the back end should also
// drop any cdi.k8s.io/ annotation (see SpecOpts).
func (in *Injector) Plan(uuids []string) (runtime.DevicePlan, error) {
	_, dp, err := in.checkedPlan(uuids)
	return dp, err
}

func (in *Injector) checkedPlan(uuids []string) (*plan, runtime.DevicePlan, error) {
	names, err := deviceNames(uuids)
	if err != nil {
		return nil, runtime.DevicePlan{}, err
	}
	var p *plan
	in.snapshot(func() { p, err = in.plan(names) })
	if errors.Is(err, errStaleSpec) && in.genLib != nil && in.inv != nil {
		in.logger.Warn("the CDI spec no longer fits the GPUs or the driver; regenerating it", "error", err)
		ctx, cancel := context.WithTimeout(context.Background(), regenerateTimeout)
		_, gerr := in.EnsureNVIDIASpec(ctx, in.inv, in.genLib, in.genOpts)
		cancel()
		if gerr != nil {
			in.logger.Error("regenerating the NVIDIA CDI spec failed", "error", gerr)
		}
		in.snapshot(func() { p, err = in.plan(names) })
	}
	if err != nil {
		return nil, runtime.DevicePlan{}, err
	}
	return p, p.devicePlan(), nil
}

// regenerateTimeout bounds a regeneration an injection waits for.
const regenerateTimeout = time.Minute

// errStaleSpec marks a spec that no longer matches the host: a GPU's node
// with another minor, a spec for another driver, a driver file gone.
var errStaleSpec = errors.New("the CDI spec does not match the host")

// deviceNames turns GPU and MIG device UUIDs into qualified CDI names,
// refusing anything else: "all" or an index would widen or shift what the
// tenant gets. Duplicates are dropped.
func deviceNames(uuids []string) ([]string, error) {
	var names, bad []string
	seen := map[string]bool{}
	for _, u := range uuids {
		if !gpu.IsGPUUUID(u) && !gpu.IsMIGUUID(u) {
			bad = append(bad, fmt.Sprintf("%q", u))
			continue
		}
		if !seen[u] {
			seen[u] = true
			names = append(names, qualifiedName(u))
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("%w: not GPU or MIG device UUIDs (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, MIG-…): %s",
			errdefs.ErrInvalidArgument, strings.Join(bad, ", "))
	}
	return names, nil
}

// plan is one checked injection: the edits to apply, copied out of the
// cache, and the device nodes that must and must not end up in the spec.
type plan struct {
	names []string
	// edits are applied in order: each spec's spec-level edits before the
	// first of its devices, as the CDI library does.
	edits []cdispec.ContainerEdits
	// allocated are the nodes the injected devices add; foreign are the
	// nodes of other GPUs (see foreignNodes).
	allocated nodeSet
	foreign   nodeSet
}

// plan resolves names, checks the hooks of everything they would inject and
// collects the node sets for verification.
func (in *Injector) plan(names []string) (*plan, error) {
	devs, unresolved := in.resolve(names)
	if len(unresolved) > 0 {
		err := fmt.Errorf("%w: no CDI device for %s in %s", errdefs.ErrFailedPrecondition,
			strings.Join(unresolved, ", "), strings.Join(in.dirs, ":"))
		if problems := in.loadProblems(); len(problems) > 0 {
			err = fmt.Errorf("%w (spec problems: %s)", err, strings.Join(problems, "; "))
		}
		return nil, err
	}

	if stale := staleProblems(devs, in.inv, in.driverFile); len(stale) > 0 {
		for _, pr := range stale {
			in.logger.Error("CDI spec does not match the host", "problem", pr)
		}
		return nil, fmt.Errorf("%w: refusing to inject %s: %w: %s", errdefs.ErrFailedPrecondition,
			strings.Join(names, ", "), errStaleSpec, strings.Join(stale, "; "))
	}

	p := &plan{names: names, allocated: newNodeSet(), foreign: newNodeSet()}
	var hookProblems, nodeProblems, policyProblems, specPaths []string
	specDone := map[*cdilib.Spec]bool{}
	injected := map[*cdilib.Device]bool{}
	for _, dev := range devs {
		spec := dev.GetSpec()
		if !specDone[spec] {
			specDone[spec] = true
			e := cloneEdits(&spec.ContainerEdits)
			where := fmt.Sprintf("CDI spec %s: spec-level edits", specLabel(spec))
			hookProblems = append(hookProblems, in.hooks.editsProblems(e, where)...)
			nodeProblems = append(nodeProblems, gpuNodeProblems(e, where, 0)...)
			policyProblems = append(policyProblems, in.editsPolicyProblems(e, where)...)
			specPaths = append(specPaths, spec.GetPath())
			p.edits = append(p.edits, *e)
		}
		e := cloneEdits(&dev.ContainerEdits)
		where := fmt.Sprintf("CDI spec %s: device %s", specLabel(spec), dev.GetQualifiedName())
		hookProblems = append(hookProblems, in.hooks.editsProblems(e, where)...)
		nodeProblems = append(nodeProblems, gpuNodeProblems(e, where, 1)...)
		policyProblems = append(policyProblems, in.editsPolicyProblems(e, where)...)
		p.edits = append(p.edits, *e)
		p.allocated.addEdits(e, dev.GetQualifiedName())
		injected[dev] = true
	}
	if len(hookProblems) > 0 {
		for _, pr := range hookProblems {
			in.logger.Error("refusing CDI spec with an unsafe hook", "problem", pr)
		}
		return nil, fmt.Errorf("%w: refusing to inject %s: unsafe CDI hooks: %s",
			errdefs.ErrFailedPrecondition, strings.Join(names, ", "), strings.Join(hookProblems, "; "))
	}
	if len(nodeProblems) > 0 {
		for _, pr := range nodeProblems {
			in.logger.Error("refusing CDI spec that hands out extra GPUs", "problem", pr)
		}
		return nil, fmt.Errorf("%w: refusing to inject %s: %s",
			errdefs.ErrFailedPrecondition, strings.Join(names, ", "), strings.Join(nodeProblems, "; "))
	}

	policyProblems = append(policyProblems, in.specFileProblems(specPaths)...)
	if len(policyProblems) > 0 {
		for _, pr := range policyProblems {
			in.logger.Error("refusing CDI spec that reaches beyond the GPUs", "problem", pr)
		}
		return nil, fmt.Errorf("%w: refusing to inject %s: %s",
			errdefs.ErrFailedPrecondition, strings.Join(names, ", "), strings.Join(policyProblems, "; "))
	}

	class := in.classDevices()
	migIssues, migParents := migProblems(devs, class, in.inv)
	if len(migIssues) > 0 {
		slices.Sort(migIssues)
		for _, pr := range migIssues {
			in.logger.Error("refusing MIG device injection", "problem", pr)
		}
		return nil, fmt.Errorf("%w: refusing to inject %s: %s",
			errdefs.ErrFailedPrecondition, strings.Join(names, ", "), strings.Join(slices.Compact(migIssues), "; "))
	}
	p.foreign = foreignNodes(class, injected, p.allocated)
	// The parent GPU node of an injected, verified MIG device is shared
	// with its siblings and the parent's own entry: not another GPU's.
	p.foreign.subtract(migParents)
	var foreign []string
	for path, owner := range p.allocated.byPath {
		if other, ok := p.foreign.byPath[path]; ok {
			foreign = append(foreign, fmt.Sprintf("%s adds device node %s, which belongs to %s", owner, path, other))
		}
	}
	for id, owner := range p.allocated.byID {
		if other, ok := p.foreign.byID[id]; ok {
			foreign = append(foreign, fmt.Sprintf("%s adds device node %s, the node of %s", owner, id, other))
		}
	}
	if len(foreign) > 0 {
		slices.Sort(foreign)
		return nil, fmt.Errorf("%w: refusing GPU injection of [%s]: %s", errdefs.ErrFailedPrecondition,
			strings.Join(names, " "), strings.Join(foreign, "; "))
	}
	return p, nil
}

// devicePlan turns the checked edits into the back end's neutral plan, with
// every device node's numbers resolved, later edits replacing earlier ones
// at the same path as the CDI library does, and NVIDIA_VISIBLE_DEVICES=void
// last.
func (p *plan) devicePlan() runtime.DevicePlan {
	dp := runtime.DevicePlan{Names: slices.Clone(p.names)}
	for i := range p.edits {
		e := &p.edits[i]
		dp.Env = append(dp.Env, e.Env...)
		for _, n := range e.DeviceNodes {
			if n == nil {
				continue
			}
			id, _ := nodeIDOf(n)
			d := runtime.PlanDevice{
				Path: n.Path, HostPath: hostPathOf(n), Type: id.typ, Major: id.major, Minor: id.minor,
				FileMode: clonePtr(n.FileMode), UID: clonePtr(n.UID), GID: clonePtr(n.GID), Access: n.Permissions,
			}
			if d.FileMode == nil {
				if fi, err := os.Stat(d.HostPath); err == nil {
					mode := fi.Mode().Perm()
					d.FileMode = &mode
				}
			}
			dp.Devices = slices.DeleteFunc(dp.Devices, func(o runtime.PlanDevice) bool { return o.Path == d.Path })
			dp.Devices = append(dp.Devices, d)
		}
		for _, m := range e.Mounts {
			if m == nil {
				continue
			}
			dp.Mounts = slices.DeleteFunc(dp.Mounts, func(o runtime.PlanMount) bool { return o.ContainerPath == m.ContainerPath })
			dp.Mounts = append(dp.Mounts, runtime.PlanMount{HostPath: m.HostPath, ContainerPath: m.ContainerPath, Options: slices.Clone(m.Options)})
		}
		for _, h := range e.Hooks {
			if h == nil {
				continue
			}
			dp.Hooks = append(dp.Hooks, runtime.PlanHook{Stage: h.HookName, Path: h.Path,
				Args: slices.Clone(h.Args), Env: slices.Clone(h.Env), Timeout: clonePtr(h.Timeout)})
		}
	}
	dp.Env = append(dp.Env, visibleDevicesEnv+"=void")
	return dp
}

// withoutLegacyRequests removes every way, other than this option, that a
// container could ask a lower layer for GPUs.
//
// NVIDIA_VISIBLE_DEVICES is how the legacy nvidia-container-runtime (and
// its prestart hook) choose what to mount; an image saying "all" would get
// every GPU on a host where an operator configured it as containerd's
// runtime. The agent never relies on it, and "void" is the value that makes
// it do nothing at all. CDI annotations (cdi.k8s.io/...) are dropped because
// a CDI-aware runtime below containerd would inject the devices they name.
func withoutLegacyRequests(s *oci.Spec) {
	setVisibleDevicesVoid(s)
	maps.DeleteFunc(s.Annotations, func(k, _ string) bool {
		return strings.HasPrefix(k, cdilib.AnnotationPrefix)
	})
}

// setVisibleDevicesVoid leaves exactly one NVIDIA_VISIBLE_DEVICES, "void".
func setVisibleDevicesVoid(s *oci.Spec) {
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	s.Process.Env = slices.DeleteFunc(s.Process.Env, func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return name == visibleDevicesEnv
	})
	s.Process.Env = append(s.Process.Env, visibleDevicesEnv+"=void")
}

// cloneEdits deep-copies container edits, so that what the cache holds is
// neither changed by an injection nor changes under one. Fields a future
// library version adds are copied shallowly by the struct copies.
func cloneEdits(e *cdispec.ContainerEdits) *cdispec.ContainerEdits {
	out := &cdispec.ContainerEdits{
		Env:            slices.Clone(e.Env),
		AdditionalGIDs: slices.Clone(e.AdditionalGIDs),
	}
	for _, d := range e.DeviceNodes {
		if d == nil {
			continue
		}
		c := *d
		c.FileMode, c.UID, c.GID = clonePtr(d.FileMode), clonePtr(d.UID), clonePtr(d.GID)
		out.DeviceNodes = append(out.DeviceNodes, &c)
	}
	for _, h := range e.Hooks {
		if h == nil {
			continue
		}
		c := *h
		c.Args, c.Env, c.Timeout = slices.Clone(h.Args), slices.Clone(h.Env), clonePtr(h.Timeout)
		out.Hooks = append(out.Hooks, &c)
	}
	for _, m := range e.Mounts {
		if m == nil {
			continue
		}
		c := *m
		c.Options = slices.Clone(m.Options)
		out.Mounts = append(out.Mounts, &c)
	}
	for _, n := range e.NetDevices {
		if n == nil {
			continue
		}
		c := *n
		out.NetDevices = append(out.NetDevices, &c)
	}
	if e.IntelRdt != nil {
		c := *e.IntelRdt
		c.Schemata = slices.Clone(e.IntelRdt.Schemata)
		out.IntelRdt = &c
	}
	return out
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}
