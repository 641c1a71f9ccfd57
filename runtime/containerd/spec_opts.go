package containerd

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// cfsPeriod is the CFS period (µs) that CPU quotas are expressed against.
const cfsPeriod = 100000

// specOpts builds the container's OCI spec from the image and the request.
// Confinement comes last among the agent's own options so that nothing
// before it can loosen it.
func specOpts(img oci.Image, spec runtime.InstanceSpec, ulimits map[string]int64) []oci.SpecOpts {
	opts := []oci.SpecOpts{
		withArgs(img, spec.Entrypoint, spec.Command),
		oci.WithEnv(envList(spec.Env)),
		oci.WithHostname(spec.ID),
		withResources(spec.Enforced()),
		withUlimits(ulimits),
		withConfinement(),
	}
	return opts
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

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
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
	return oci.Compose(opts...)
}

// withConfinement applies what every tenant container gets whatever it asks
// for: no new privileges, the default seccomp profile, default capabilities
// and nothing privileged.
func withConfinement() oci.SpecOpts {
	return oci.Compose(
		oci.WithNoNewPrivileges,
		seccomp.WithDefaultProfile(),
	)
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
// cgroup rules and hooks are the plan's (see runtime.DevicePlan.Verify).
func verifyConfined(plan runtime.DevicePlan) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		var problems []string
		if s.Process == nil || !s.Process.NoNewPrivileges {
			problems = append(problems, "no_new_privileges is off")
		}
		if s.Linux == nil || s.Linux.Seccomp == nil {
			problems = append(problems, "no seccomp profile")
		}
		if s.Process != nil && s.Process.Capabilities != nil {
			for _, c := range s.Process.Capabilities.Bounding {
				if c == "CAP_SYS_ADMIN" {
					problems = append(problems, "CAP_SYS_ADMIN granted")
				}
			}
		}
		if err := plan.Verify(s); err != nil {
			problems = append(problems, err.Error())
		}
		if len(problems) > 0 {
			return fmt.Errorf("refusing unconfined spec: %s: %w", strings.Join(problems, "; "), errdefs.ErrFailedPrecondition)
		}
		return nil
	}
}

func hasOption(opts []string, want string) bool {
	for _, o := range opts {
		if o == want {
			return true
		}
	}
	return false
}
