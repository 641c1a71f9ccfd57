package containerd

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
)

// buildFinal runs the back end's option list tail on a default spec: the
// agent's confinement, any extra option (standing in for a bug or a later
// option), the device plan last, then the final check.
func buildFinal(t *testing.T, plan runtime.DevicePlan, extra ...oci.SpecOpts) (*oci.Spec, error) {
	t.Helper()
	s := defaultSpec(t)
	opts := append([]oci.SpecOpts{withConfinement()}, extra...)
	opts = append(opts, withDevicePlan(plan), verifyConfined(plan, nil, "", ""))
	for _, o := range opts {
		if err := o(context.Background(), nil, &containers.Container{ID: "test"}, s); err != nil {
			return s, err
		}
	}
	return s, nil
}

// TestFinalSpecVerifiedAfterDevicePlan: the confinement check runs on the
// final spec, device plan included; only the plan's read-only driver files
// may be bind-mounted, and only its devices and hooks reach the spec.
func TestFinalSpecVerifiedAfterDevicePlan(t *testing.T) {
	testenv.Require(t) // root: only root-owned driver files are trusted
	t.Parallel()
	dir := t.TempDir()
	lib := filepath.Join(dir, "libcuda.so.550.54.15")
	if err := os.WriteFile(lib, []byte("lib"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(lib, 0o644)
	sock := filepath.Join(dir, "socket")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	good := runtime.DevicePlan{
		Names:   []string{"nvidia.com/gpu=GPU-test"},
		Devices: []runtime.PlanDevice{{Path: "/dev/nvidia0", HostPath: "/dev/null", Type: "c", Major: 1, Minor: 3}},
		Mounts:  []runtime.PlanMount{{HostPath: lib, ContainerPath: "/usr/lib/libcuda.so.1", Options: []string{"ro", "nosuid", "nodev", "bind"}}},
		Env:     []string{"NVIDIA_VISIBLE_DEVICES=void"},
		Hooks:   []runtime.PlanHook{{Stage: runtime.HookCreateContainer, Path: "/usr/bin/nvidia-cdi-hook", Args: []string{"nvidia-cdi-hook", "update-ldcache"}, Env: []string{"X=1"}}},
	}
	s, err := buildFinal(t, good)
	if err != nil {
		t.Fatalf("a plan of one GPU and a read-only driver file: %v", err)
	}
	found := false
	for _, m := range s.Mounts {
		found = found || (m.Source == lib && m.Destination == "/usr/lib/libcuda.so.1")
	}
	if !found || len(s.Linux.Devices) != 1 || len(s.Hooks.CreateContainer) != 1 {
		t.Fatalf("plan not applied: mounts %v devices %v hooks %v", s.Mounts, s.Linux.Devices, s.Hooks)
	}

	withMount := func(m runtime.PlanMount) runtime.DevicePlan {
		p := good
		p.Mounts = []runtime.PlanMount{m}
		return p
	}
	for _, tc := range []struct {
		name  string
		plan  runtime.DevicePlan
		extra oci.SpecOpts
		want  string
	}{
		{"a writable driver file", withMount(runtime.PlanMount{HostPath: lib, ContainerPath: "/usr/lib/x", Options: []string{"rw", "bind"}}), nil, "not read-only"},
		{"a daemon socket", withMount(runtime.PlanMount{HostPath: sock, ContainerPath: "/run/nvidia-persistenced/socket", Options: []string{"ro", "bind"}}), nil, "is a socket"},
		{"a directory", withMount(runtime.PlanMount{HostPath: dir, ContainerPath: "/driver", Options: []string{"ro", "rbind"}}), nil, "is a directory"},
		{"a host mount added by another option", good, oci.WithMounts([]specs.Mount{{Source: "/etc", Destination: "/host-etc", Type: "bind", Options: []string{"rbind", "ro"}}}), "/etc -> /host-etc"},
		{"a device added by another option", good, oci.WithLinuxDevice("/dev/zero", "rwm"), "/dev/zero"},
		{"a hook added by another option", good, func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
			s.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/usr/bin/nvidia-ctk", Args: []string{"nvidia-ctk", "runtime", "configure"}}}}
			return nil
		}, "runtime configure"},
		{"all devices allowed", good, oci.WithAllDevicesAllowed, "allows a device outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var extra []oci.SpecOpts
			if tc.extra != nil {
				extra = append(extra, tc.extra)
			}
			_, err := buildFinal(t, tc.plan, extra...)
			if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("final spec = %v, want FailedPrecondition naming %q", err, tc.want)
			}
		})
	}
}
