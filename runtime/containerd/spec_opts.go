package containerd

import (
	"context"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
)

// cfsPeriod is the CFS period (µs) that CPU quotas are expressed against.
const cfsPeriod = 100000

// specOpts builds the container's OCI spec from the image and the request.
// Confinement comes last among the agent's own options so that nothing
// before it can loosen it.
func specOpts(img oci.Image, spec runtime.InstanceSpec, ulimits map[string]int64) []oci.SpecOpts {
	opts := []oci.SpecOpts{
		withArgs(img, spec.Entrypoint, spec.Command),
		oci.WithEnv(backend.EnvList(spec.Env)),
		oci.WithHostname(spec.ID),
		withResources(spec.Enforced()),
		withUlimits(ulimits),
		withConfinement(),
		withVolumes(spec.VolumeMounts),
	}
	return opts
}

// withVolumes bind-mounts the rental's volumes read-write
// (runtime.VolumeMountOptions), replacing whatever the spec had at their
// paths.
func withVolumes(vols []runtime.VolumeMount) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		for _, v := range vols {
			s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return path.Clean(m.Destination) == path.Clean(v.ContainerPath) })
			s.Mounts = append(s.Mounts, specs.Mount{Source: v.HostPath, Destination: v.ContainerPath, Type: "bind",
				Options: slices.Clone(runtime.VolumeMountOptions)})
		}
		return nil
	}
}

// withArgs follows docker run: a command replaces the image's CMD; an
// entrypoint replaces its ENTRYPOINT and drops its CMD. The image's user is
// resolved without mounting its rootfs (see withImageConfigArgs).
func withArgs(img oci.Image, entrypoint, command []string) oci.SpecOpts {
	if len(entrypoint) == 0 {
		return withImageConfigArgs(img, command)
	}
	return oci.Compose(
		withImageConfigArgs(img, nil),
		oci.WithProcessArgs(append(append([]string{}, entrypoint...), command...)...),
	)
}

// withResources enforces the requested limits through cgroups and sizes the
// /dev/shm tmpfs.
func withResources(res runtime.Resources) oci.SpecOpts {
	var opts []oci.SpecOpts
	if res.CPUs > 0 {
		opts = append(opts, oci.WithCPUCFS(int64(res.CPUs*cfsPeriod), cfsPeriod))
	}
	if res.MemoryMB > 0 {
		limit := res.MemoryMB << 20
		// Swap equal to the limit means no swap on top of it.
		opts = append(opts, oci.WithMemoryLimit(uint64(limit)), oci.WithMemorySwap(limit))
	}
	if res.Pids > 0 {
		opts = append(opts, oci.WithPidsLimit(res.Pids))
	}
	if res.ShmMB > 0 {
		opts = append(opts, oci.WithDevShmSize(res.ShmMB<<10))
	}
	if res.CPUSetCPUs != "" {
		opts = append(opts, oci.WithCPUs(res.CPUSetCPUs))
	}
	if res.CPUSetMems != "" {
		opts = append(opts, oci.WithCPUsMems(res.CPUSetMems))
	}
	return oci.Compose(opts...)
}

// withConfinement applies what every tenant container gets whatever it asks
// for: no new privileges, the default seccomp profile, the rental's
// capabilities (backend.RentalCapabilities: the defaults without
// CAP_NET_RAW) in every set, the rental's sysctls, and nothing privileged.
func withConfinement() oci.SpecOpts {
	return oci.Compose(
		oci.WithNoNewPrivileges,
		seccomp.WithDefaultProfile(),
		withRentalCapabilities(),
		withSysctls(backend.RentalSysctls()),
		// A cgroup namespace of its own, as on Docker: the default spec
		// has one only on cgroup v2.
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.CgroupNamespace}),
	)
}

// withRentalCapabilities gives the process backend.RentalCapabilities in
// its bounding, effective and permitted sets, and none to inherit.
func withRentalCapabilities() oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Process == nil {
			s.Process = &specs.Process{}
		}
		s.Process.Capabilities = &specs.LinuxCapabilities{
			Bounding:  slices.Clone(backend.RentalCapabilities),
			Effective: slices.Clone(backend.RentalCapabilities),
			Permitted: slices.Clone(backend.RentalCapabilities),
		}
		return nil
	}
}

// withSysctls sets the given sysctls in the container's namespaces.
func withSysctls(sysctls map[string]string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		maps.Copy(s.Linux.Sysctl, sysctls)
		return nil
	}
}

// withDevicePlan applies the instance's device plan (its GPUs, through
// CDI): devices, driver files, environment and hooks. It goes after every
// other option, so that nothing resets what it adds.
func withDevicePlan(plan runtime.DevicePlan) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		// Annotations a CDI-aware runtime below containerd would act on.
		maps.DeleteFunc(s.Annotations, func(k, _ string) bool { return strings.HasPrefix(k, "cdi.k8s.io/") })
		return plan.Apply(s)
	}
}

// verifyConfined refuses a final spec that would give the tenant more than
// the defaults and the device plan: it runs after every option, the device
// plan's included, so a bug or a hostile spec file cannot slip a privileged
// container, a host mount or a device through. The only bind mounts allowed
// are the plan's read-only driver files; the only device nodes, device
// cgroup rules and hooks are the plan's (see runtime.DevicePlan.Verify);
// the only other mounts the runtime's defaults, once each. Namespaces are
// the container's own (its network namespace may be netns, the rental's
// pinned one), capabilities, sysctls and the working directory those of
// the policy shared with the Docker back end (runtime/backend/confine.go), and the
// AppArmor profile appArmor where the host has AppArmor (else "").
func verifyConfined(plan runtime.DevicePlan, vols []runtime.VolumeMount, netns, appArmor string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		var problems []string
		if s.Process == nil || !s.Process.NoNewPrivileges {
			problems = append(problems, "no_new_privileges is off")
		}
		if s.Linux == nil || s.Linux.Seccomp == nil {
			problems = append(problems, "no seccomp profile")
		}
		if s.Process != nil {
			if c := s.Process.Capabilities; c != nil {
				for _, set := range []struct {
					name string
					caps []string
				}{{"bounding", c.Bounding}, {"effective", c.Effective}, {"permitted", c.Permitted}, {"inheritable", c.Inheritable}, {"ambient", c.Ambient}} {
					if p := backend.CapabilityProblem(set.name, set.caps); p != "" {
						problems = append(problems, p)
					}
				}
			}
			if p := backend.WorkingDirProblem(s.Process.Cwd); p != "" {
				problems = append(problems, p)
			}
			if appArmor != "" && s.Process.ApparmorProfile != appArmor {
				problems = append(problems, fmt.Sprintf("AppArmor profile %q, want %q", s.Process.ApparmorProfile, appArmor))
			}
		}
		if s.Linux != nil {
			problems = append(problems, namespaceProblems(s.Linux.Namespaces, netns)...)
			if p := backend.SysctlProblem(s.Linux.Sysctl); p != "" {
				problems = append(problems, p)
			}
		} else {
			problems = append(problems, "no Linux namespaces")
		}
		problems = append(problems, runtimeMountProblems(s.Mounts)...)
		// The volumes are the only read-write bind mounts; everything
		// else is the device plan's to allow.
		rest, vp := runtime.VolumeMountProblems(s.Mounts, vols)
		problems = append(problems, vp...)
		planned := *s
		planned.Mounts = rest
		if err := plan.Verify(&planned); err != nil {
			problems = append(problems, err.Error())
		}
		if len(problems) > 0 {
			return fmt.Errorf("refusing unconfined spec: %s: %w", strings.Join(problems, "; "), errdefs.ErrFailedPrecondition)
		}
		return nil
	}
}

// ownNamespaces are the namespaces a rental must have of its own: a
// missing one is the host's.
var ownNamespaces = []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace, specs.NetworkNamespace, specs.CgroupNamespace}

// namespaceProblems: each of ownNamespaces new (no path), but the network
// namespace, which may be netns; any other namespace (user, cgroup, time)
// new as well.
func namespaceProblems(nss []specs.LinuxNamespace, netns string) []string {
	var out []string
	for _, want := range ownNamespaces {
		if !slices.ContainsFunc(nss, func(n specs.LinuxNamespace) bool { return n.Type == want }) {
			out = append(out, fmt.Sprintf("the host's %s namespace", want))
		}
	}
	for _, n := range nss {
		if n.Path == "" || (n.Type == specs.NetworkNamespace && netns != "" && n.Path == netns) {
			continue
		}
		out = append(out, fmt.Sprintf("%s namespace joined at %s", n.Type, n.Path))
	}
	return out
}

// runtimeMounts are the mounts of the runtime's default spec, by
// destination and type: the only mounts other than binds a rental has.
var runtimeMounts = map[string]string{
	"/proc": "proc", "/dev": "tmpfs", "/dev/pts": "devpts", "/dev/shm": "tmpfs",
	"/dev/mqueue": "mqueue", "/sys": "sysfs", "/run": "tmpfs", "/sys/fs/cgroup": "cgroup",
}

// runtimeMountProblems refuses a mount that is neither a bind mount
// (checked against the device plan) nor one of runtimeMounts, and any of
// those twice.
func runtimeMountProblems(mounts []specs.Mount) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range mounts {
		if runtime.IsBindMount(m) {
			continue
		}
		dest := path.Clean(m.Destination)
		switch typ, ok := runtimeMounts[dest]; {
		case !ok || typ != m.Type:
			out = append(out, fmt.Sprintf("%s mount at %s", m.Type, m.Destination))
		case seen[dest]:
			out = append(out, fmt.Sprintf("a second %s mount at %s", m.Type, m.Destination))
		}
		seen[dest] = true
	}
	return out
}

func hasOption(opts []string, want string) bool {
	for _, o := range opts {
		if o == want {
			return true
		}
	}
	return false
}
