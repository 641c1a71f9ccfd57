package cdi

import (
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/internal/testenv"
)

func TestVerifyRefusesAnotherGPU(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	uuids := fakeUUIDs()
	extraNode := func(path, host string) func(*cdispec.Spec) {
		return func(s *cdispec.Spec) {
			s.Devices[0].ContainerEdits.DeviceNodes = append(s.Devices[0].ContainerEdits.DeviceNodes,
				&cdispec.DeviceNode{Path: path, HostPath: host})
		}
	}
	tests := []struct {
		name string
		edit func(*cdispec.Spec)
		// before is an option the runtime applied before the CDI one.
		before oci.SpecOpts
		want   string
	}{
		{"device 0 also adds device 1's node", extraNode("/dev/nvidia1", hostNodes()[1]), nil, "/dev/nvidia1"},
		{"device 0 adds device 1's host node under another name", extraNode("/dev/innocent", hostNodes()[1]), nil, "c 1:5"},
		{"spec-level edits add device 3's node", func(s *cdispec.Spec) {
			s.ContainerEdits.DeviceNodes = append(s.ContainerEdits.DeviceNodes, &cdispec.DeviceNode{Path: "/dev/nvidia3", HostPath: hostNodes()[3]})
		}, nil, "/dev/nvidia3"},
		{"a GPU node no spec defines", extraNode("/dev/nvidia7", "/dev/null-not-there-but-specified"), nil, "/dev/nvidia7"},
		{"an earlier option added a GPU", nil, oci.WithLinuxDevice("/dev/full", "rwm"), "c 1:7"},
		{"an earlier option opened all devices", nil, oci.WithAllDevicesAllowed, "allows"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			raw := gpuSpec(uuids)
			if tt.edit != nil {
				tt.edit(raw)
			}
			// A node the CDI library cannot stat must be fully specified.
			for _, n := range raw.Devices[0].ContainerEdits.DeviceNodes {
				if strings.HasSuffix(n.HostPath, "-specified") {
					n.Type, n.Major, n.Minor = "c", nvidiaMajor, 7
				}
			}
			writeSpec(t, dir, "nvidia.json", raw)
			in, _, _ := newTestInjector(t, []string{dir})

			ctx, c, s := defaultSpec(t)
			if tt.before != nil {
				if err := tt.before(ctx, nil, c, s); err != nil {
					t.Fatal(err)
				}
			}
			// Refused either when the option is built or when it runs.
			opt, err := in.SpecOpts(uuids[:1])
			if err == nil {
				err = opt(ctx, nil, c, s)
			}
			if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("injection = %v, want FailedPrecondition mentioning %q", err, tt.want)
			}
		})
	}
}

// TestVerifyWithoutSpecs: on a host without any spec the static NVIDIA rules
// still keep GPUs out of a container that was allocated none.
func TestVerifyWithoutSpecs(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	minor := func(n int64) *int64 { return &n }
	major := minor(nvidiaMajor)
	tests := []struct {
		name    string
		devices []specs.LinuxDevice
		rules   []specs.LinuxDeviceCgroup
		refused bool
	}{
		{"nothing", nil, nil, false},
		// A container without GPUs gets no NVIDIA node at all.
		{"nvidiactl and modeset are not for CPU rentals", []specs.LinuxDevice{
			{Path: "/dev/nvidiactl", Type: "c", Major: nvidiaMajor, Minor: 255},
			{Path: "/dev/nvidia-modeset", Type: "c", Major: nvidiaMajor, Minor: 254},
		}, []specs.LinuxDeviceCgroup{{Allow: true, Type: "c", Major: major, Minor: minor(255), Access: "rw"}}, true},
		{"a GPU node by path", []specs.LinuxDevice{{Path: "/dev/nvidia5", Type: "c", Major: 1, Minor: 3}}, nil, true},
		{"a GPU node by number", []specs.LinuxDevice{{Path: "/dev/x", Type: "c", Major: nvidiaMajor, Minor: 2}}, nil, true},
		{"cgroup allows one GPU", nil, []specs.LinuxDeviceCgroup{{Allow: true, Type: "c", Major: major, Minor: minor(0), Access: "rw"}}, true},
		{"cgroup allows every NVIDIA node", nil, []specs.LinuxDeviceCgroup{{Allow: true, Type: "c", Major: major, Access: "rw"}}, true},
		{"cgroup denies them", nil, []specs.LinuxDeviceCgroup{{Allow: false, Type: "c", Major: major, Access: "rwm"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in, _, _ := newTestInjector(t, []string{t.TempDir()})
			opt, err := in.SpecOpts(nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, c, s := defaultSpec(t)
			s.Linux.Devices = tt.devices
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, tt.rules...)
			err = opt(ctx, nil, c, s)
			if refused := errdefs.IsFailedPrecondition(err); refused != tt.refused || (err != nil && !refused) {
				t.Errorf("option = %v, want refused %v", err, tt.refused)
			}
		})
	}
}

// TestVerifyMissingNode checks the other half of the rule on a spec the
// option did not build: an allocated GPU whose node is absent is refused.
func TestVerifyMissingNode(t *testing.T) {
	t.Parallel()
	p := &plan{names: []string{qualifiedName(fakeUUIDs()[0])}, allocated: newNodeSet(), foreign: newNodeSet()}
	p.allocated.addEdits(&cdispec.ContainerEdits{DeviceNodes: []*cdispec.DeviceNode{{Path: "/dev/nvidia0", HostPath: "/dev/null"}}}, "GPU 0")
	s := &oci.Spec{Linux: &specs.Linux{}}
	err := p.verify(s)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "/dev/nvidia0 of allocated GPU 0 is missing") {
		t.Errorf("verify = %v, want the missing node refused", err)
	}
	s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/nvidia0", Type: "c", Major: 1, Minor: 3}}
	if err := p.verify(s); err != nil {
		t.Errorf("verify with the node present = %v", err)
	}
}

// TestOptionIsLast documents the contract with the runtime: options after
// this one could undo it, which is why it must come last.
func TestOptionIsLast(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	dir := t.TempDir()
	writeSpec(t, dir, "nvidia.json", gpuSpec(fakeUUIDs()))
	in, _, _ := newTestInjector(t, []string{dir})
	opt, err := in.SpecOpts(fakeUUIDs()[:2])
	if err != nil {
		t.Fatal(err)
	}
	ctx, c, s := defaultSpec(t)
	for _, o := range []oci.SpecOpts{oci.WithEnv([]string{"NVIDIA_VISIBLE_DEVICES=all"}), opt} {
		if err := o(ctx, nil, c, s); err != nil {
			t.Fatal(err)
		}
	}
	if got := envValues(s, visibleDevicesEnv); len(got) != 1 || got[0] != "void" {
		t.Errorf("NVIDIA_VISIBLE_DEVICES = %v after an earlier option set all", got)
	}
}

// TestVerifyAcceptsAliases: the shapes of real specs that repeat the
// injected GPUs' nodes must not be mistaken for another GPU.
func TestVerifyAcceptsAliases(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	uuids := fakeUUIDs()
	tests := []struct {
		name  string
		write func(t *testing.T, static, dynamic string)
	}{
		{"all and index devices beside the UUID ones", func(t *testing.T, _, dynamic string) {
			raw := gpuSpec(uuids)
			all := cdispec.Device{Name: "all"}
			for i, d := range raw.Devices {
				all.ContainerEdits.DeviceNodes = append(all.ContainerEdits.DeviceNodes, d.ContainerEdits.DeviceNodes...)
				index := d
				index.Name = string(rune('0' + i))
				raw.Devices = append(raw.Devices, index)
			}
			raw.Devices = append(raw.Devices, all)
			writeSpec(t, dynamic, "nvidia.yaml", raw)
		}},
		{"a stale copy in a lower-priority directory", func(t *testing.T, static, dynamic string) {
			writeSpec(t, dynamic, "nvidia.json", gpuSpec(uuids))
			stale := gpuSpec(uuids)
			// After a GPU was replaced, GPU 3's old entry used GPU 0's node.
			stale.Devices[3].ContainerEdits.DeviceNodes[0].HostPath = hostNodes()[0]
			writeSpec(t, static, "old.json", stale)
		}},
		{"nvidiactl repeated in every device", func(t *testing.T, _, dynamic string) {
			raw := gpuSpec(uuids)
			for i := range raw.Devices {
				raw.Devices[i].ContainerEdits.DeviceNodes = append(raw.Devices[i].ContainerEdits.DeviceNodes,
					&cdispec.DeviceNode{Path: "/dev/nvidiactl", HostPath: "/dev/nvidiactl-absent", Type: "c", Major: nvidiaMajor, Minor: 255})
			}
			writeSpec(t, dynamic, "nvidia.json", raw)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			static, dynamic := t.TempDir(), t.TempDir()
			tt.write(t, static, dynamic)
			in, _, _ := newTestInjector(t, []string{static, dynamic})
			s, err := inject(t, in, []string{uuids[0], uuids[2]})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range devicePaths(s) {
				if p == "/dev/nvidia1" || p == "/dev/nvidia3" {
					t.Errorf("device nodes %v hold another GPU", devicePaths(s))
				}
			}
		})
	}
}

// TestVerifySingleGPUHost: with one GPU nothing is "shared", so a container
// allocated none still may not get it.
func TestVerifySingleGPUHost(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	dir := t.TempDir()
	writeSpec(t, dir, "nvidia.json", gpuSpec(fakeUUIDs()[:1]))
	in, _, _ := newTestInjector(t, []string{dir})
	opt, err := in.SpecOpts(nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, c, s := defaultSpec(t)
	if err := oci.WithLinuxDevice("/dev/null", "rwm")(ctx, nil, c, s); err != nil {
		t.Fatal(err)
	}
	if err := opt(ctx, nil, c, s); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("option = %v, want the GPU's node refused", err)
	}
}

// TestVerifyRefusesGPUNodeEveryDeviceAdds: a GPU node is one GPU's, however
// many devices add it. When every UUID device adds the same GPU node (a
// two-GPU spec whose GPU 0 entry points at GPU 1's node, or a spec whose
// devices all name /dev/nvidia0), it is not a shared node like nvidiactl:
// injecting one GPU would hand out the other's, and every tenant would share
// one GPU.
func TestVerifyRefusesGPUNodeEveryDeviceAdds(t *testing.T) {
	t.Parallel()
	uuids := fakeUUIDs()
	tests := []struct {
		name   string
		uuids  []string
		edit   func(*cdispec.Spec)
		inject string
	}{
		{"two GPUs, GPU 0's entry uses GPU 1's host node", uuids[:2], func(s *cdispec.Spec) {
			s.Devices[0].ContainerEdits.DeviceNodes[0].HostPath = hostNodes()[1]
		}, uuids[0]},
		{"every device adds /dev/nvidia0", uuids, func(s *cdispec.Spec) {
			for i := range s.Devices {
				s.Devices[i].ContainerEdits.DeviceNodes[0].Path = "/dev/nvidia0"
				s.Devices[i].ContainerEdits.DeviceNodes[0].HostPath = hostNodes()[0]
			}
		}, uuids[2]},
		{"every device adds c 195:0", uuids, func(s *cdispec.Spec) {
			for i := range s.Devices {
				n := s.Devices[i].ContainerEdits.DeviceNodes[0]
				n.HostPath, n.Type, n.Major, n.Minor = "/dev/nvidia0-absent", "c", nvidiaMajor, 0
			}
		}, uuids[1]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			raw := gpuSpec(tt.uuids)
			tt.edit(raw)
			writeSpec(t, dir, "nvidia.json", raw)
			in, _, _ := newTestInjector(t, []string{dir})
			s, err := inject(t, in, []string{tt.inject})
			if !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("injection = %v with devices %v, want FailedPrecondition: the node is another GPU's", err, devicePathsOrNil(s))
			}
		})
	}
}

func devicePathsOrNil(s *oci.Spec) []string {
	if s == nil {
		return nil
	}
	return devicePaths(s)
}
