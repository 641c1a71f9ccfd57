package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/internal/testenv"
)

func TestDevicePlanApplyThenVerify(t *testing.T) {
	testenv.Require(t) // root: only root-owned driver files are trusted
	t.Parallel()
	lib := filepath.Join(t.TempDir(), "libcuda.so.1")
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(lib, 0o644)
	plan := DevicePlan{
		Names:   []string{"nvidia.com/gpu=GPU-x"},
		Devices: []PlanDevice{{Path: "/dev/nvidia3", HostPath: "/dev/nvidia3", Type: "c", Major: 195, Minor: 3}},
		Mounts: []PlanMount{
			{HostPath: lib, ContainerPath: "/usr/lib/libcuda.so.1", Options: []string{"ro", "bind"}},
			{HostPath: "/dev/null", ContainerPath: "/var/run/nvidia-container-devices/void", Options: []string{"ro", "bind"}},
		},
		Env:   []string{"NVIDIA_VISIBLE_DEVICES=void"},
		Hooks: []PlanHook{{Stage: HookCreateContainer, Path: "/usr/bin/nvidia-cdi-hook", Args: []string{"nvidia-cdi-hook", "update-ldcache"}}},
	}
	base := func() *specs.Spec {
		return &specs.Spec{
			Process: &specs.Process{Env: []string{"NVIDIA_VISIBLE_DEVICES=all", "PATH=/bin"}},
			Mounts:  []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
			Linux:   &specs.Linux{Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}}},
		}
	}
	s := base()
	if err := plan.Apply(s); err != nil {
		t.Fatal(err)
	}
	if err := plan.Verify(s); err != nil {
		t.Fatalf("the plan's own result refused: %v", err)
	}
	if strings.Join(s.Process.Env, " ") != "PATH=/bin NVIDIA_VISIBLE_DEVICES=void" {
		t.Errorf("env = %v", s.Process.Env)
	}
	// The empty plan refuses everything the GPU plan added.
	err := DevicePlan{}.Verify(s)
	for _, want := range []string{"device node /dev/nvidia3 (c 195:3)", "device cgroup rule c 195:3 rwm", "host mount " + lib, "createContainer hook /usr/bin/nvidia-cdi-hook"} {
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("empty plan on a GPU spec: %v, want it to name %q", err, want)
		}
	}
	// A device of the plan that did not make it is refused too.
	s = base()
	if err := plan.Verify(s); err == nil || !strings.Contains(err.Error(), "device node /dev/nvidia3 of the device plan is missing") {
		t.Errorf("spec without the plan's device: %v", err)
	}
}
