package cdi

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/testenv"
)

// The MIG test host: GPU 0 (minor 0) in MIG mode with MIG devices A and B,
// GPU 1 (minor 1) in MIG mode with C, GPU 2 (minor 2) whole.
var (
	migParent0 = "GPU-0a0a0a0a-0000-4000-8000-000000000000"
	migParent1 = "GPU-1b1b1b1b-1111-4111-8111-111111111111"
	migWhole2  = "GPU-2c2c2c2c-2222-4222-8222-222222222222"
	migA       = "MIG-a0a0a0a0-0000-4000-8000-00000000000a"
	migB       = "MIG-b0b0b0b0-0000-4000-8000-00000000000b"
	migC       = "MIG-c0c0c0c0-0000-4000-8000-00000000000c"
)

// capsMajor stands in for the nvidia-caps major (newTestInjector allows it).
const capsMajor = 510

type migFakeInventory struct {
	fakeInventory
	migs []gpu.MIGDevice
}

func (f migFakeInventory) MIGDevices() []gpu.MIGDevice { return f.migs }

func migTestInventory() migFakeInventory {
	inv := migFakeInventory{fakeInventory: inventoryOf("550.54.15", []string{migParent0, migParent1, migWhole2}, 0, 1, 2)}
	inv.gpus[0].MIGMode, inv.gpus[1].MIGMode = gpu.MIGEnabled, gpu.MIGEnabled
	inv.migs = []gpu.MIGDevice{
		{UUID: migA, Profile: "3g.40gb", ParentIndex: 0, ParentUUID: migParent0, GPUInstanceID: 1},
		{UUID: migB, Profile: "1g.10gb", ParentIndex: 0, ParentUUID: migParent0, GPUInstanceID: 2},
		{UUID: migC, Profile: "1g.10gb", ParentIndex: 1, ParentUUID: migParent1, GPUInstanceID: 1},
	}
	return inv
}

func gpuNode(minor int64) *cdispec.DeviceNode {
	return &cdispec.DeviceNode{Path: fmt.Sprintf("/dev/nvidia%d", minor), Type: "c", Major: nvidiaMajor, Minor: minor}
}

func capsNode(minor int64) *cdispec.DeviceNode {
	return &cdispec.DeviceNode{Path: fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", minor), Type: "c", Major: capsMajor, Minor: minor}
}

// migSpec is a spec as nvcdi writes one for the MIG test host: each MIG
// device adds its parent's node and its GPU and compute instance's access
// nodes; the whole GPU adds its node; the spec-level edits add nvidiactl.
func migSpec() *cdispec.Spec {
	raw := gpuSpec(nil)
	raw.ContainerEdits.DeviceNodes = []*cdispec.DeviceNode{{Path: "/dev/nvidiactl", Type: "c", Major: nvidiaMajor, Minor: 255}}
	dev := func(name string, nodes ...*cdispec.DeviceNode) cdispec.Device {
		return cdispec.Device{Name: name, ContainerEdits: cdispec.ContainerEdits{DeviceNodes: nodes}}
	}
	raw.Devices = []cdispec.Device{
		dev(migA, gpuNode(0), capsNode(12), capsNode(13)),
		dev(migB, gpuNode(0), capsNode(21), capsNode(22)),
		dev(migC, gpuNode(1), capsNode(147), capsNode(148)),
		dev(migWhole2, gpuNode(2)),
	}
	return raw
}

func migInjector(t *testing.T, raw *cdispec.Spec, inv Inventory) *Injector {
	t.Helper()
	dir := t.TempDir()
	writeSpec(t, dir, "nvidia.json", raw)
	in, _ := newInjectorWith(t, Config{SpecDirs: []string{dir}, DeviceMajors: []int64{nvidiaMajor, capsMajor}, Inventory: inv})
	return in
}

// TestMIGInjectedSpecHoldsOnlyItsNodes injects one MIG device: the final
// OCI spec holds its parent's node, its own nvidia-caps nodes and the
// shared nvidiactl, and nothing of its sibling, the other MIG GPU or the
// whole GPU.
func TestMIGInjectedSpecHoldsOnlyItsNodes(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	in := migInjector(t, migSpec(), migTestInventory())
	for _, tt := range []struct {
		uuid string
		want []string
	}{
		{migA, []string{"/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13", "/dev/nvidia0", "/dev/nvidiactl"}},
		{migB, []string{"/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap22", "/dev/nvidia0", "/dev/nvidiactl"}},
		{migC, []string{"/dev/nvidia-caps/nvidia-cap147", "/dev/nvidia-caps/nvidia-cap148", "/dev/nvidia1", "/dev/nvidiactl"}},
		{migWhole2, []string{"/dev/nvidia2", "/dev/nvidiactl"}},
	} {
		s, err := inject(t, in, []string{tt.uuid})
		if err != nil {
			t.Fatalf("inject %s: %v", tt.uuid, err)
		}
		got := devicePaths(s)
		slices.Sort(got)
		if !slices.Equal(got, tt.want) {
			t.Errorf("inject %s: device nodes %v, want %v", tt.uuid, got, tt.want)
		}
	}
}

// TestMIGRefusesUnverifiedEntries refuses a MIG device the inventory does
// not rent, and MIG entries that reach beyond their own nodes.
func TestMIGRefusesUnverifiedEntries(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	for _, tt := range []struct {
		name  string
		edit  func(*cdispec.Spec)
		inv   Inventory
		uuid  string
		wants string
	}{
		{name: "not rented (MIG rentals off)", inv: migTestInventory().fakeInventory, uuid: migA, wants: "not in the GPU inventory"},
		{name: "unknown MIG device", inv: migTestInventory(), uuid: "MIG-d0d0d0d0-0000-4000-8000-00000000000d", wants: "no CDI device"},
		{name: "sibling's caps node", uuid: migA, wants: "nvidia-cap21",
			edit: func(s *cdispec.Spec) {
				s.Devices[0].ContainerEdits.DeviceNodes = append(s.Devices[0].ContainerEdits.DeviceNodes, capsNode(21))
			}},
		{name: "another GPU's node", uuid: migA, wants: "/dev/nvidia2",
			edit: func(s *cdispec.Spec) { s.Devices[0].ContainerEdits.DeviceNodes[0] = gpuNode(2) }},
		{name: "two GPU nodes", uuid: migA, wants: "maps to /dev/nvidia1",
			edit: func(s *cdispec.Spec) {
				s.Devices[0].ContainerEdits.DeviceNodes = append(s.Devices[0].ContainerEdits.DeviceNodes, gpuNode(1))
			}},
		{name: "a node that is not nvidia-caps", uuid: migA, wants: "neither its parent GPU's node nor an nvidia-caps node",
			edit: func(s *cdispec.Spec) {
				s.Devices[0].ContainerEdits.DeviceNodes = append(s.Devices[0].ContainerEdits.DeviceNodes,
					&cdispec.DeviceNode{Path: "/dev/nvidia-other", Type: "c", Major: capsMajor, Minor: 99})
			}},
		{name: "no caps node", uuid: migA, wants: "no nvidia-caps node",
			edit: func(s *cdispec.Spec) {
				s.Devices[0].ContainerEdits.DeviceNodes = s.Devices[0].ContainerEdits.DeviceNodes[:1]
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw := migSpec()
			if tt.edit != nil {
				tt.edit(raw)
			}
			inv := tt.inv
			if inv == nil {
				inv = migTestInventory()
			}
			_, err := inject(t, migInjector(t, raw, inv), []string{tt.uuid})
			if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), tt.wants) {
				t.Fatalf("inject %s = %v, want FailedPrecondition naming %q", tt.uuid, err, tt.wants)
			}
		})
	}
}

// TestMIGSpecMismatch: a spec fits the host only when it has a device for
// every MIG device the inventory rents, so that one lacking them is
// regenerated.
func TestMIGSpecMismatch(t *testing.T) {
	t.Parallel()
	inv := migTestInventory()
	in := migInjector(t, migSpec(), inv)
	want := in.expectedGPUs(inv)
	if !slices.Equal(want, []string{migWhole2}) {
		t.Fatalf("expected GPUs %v", want)
	}
	if why := in.mismatch(want, "550.54.15", inv); why != "" {
		t.Errorf("full spec: mismatch %q", why)
	}
	lacking := migSpec()
	lacking.Devices = slices.DeleteFunc(lacking.Devices, func(d cdispec.Device) bool { return d.Name == migC })
	in = migInjector(t, lacking, inv)
	if why := in.mismatch(want, "550.54.15", inv); !strings.Contains(why, migC) {
		t.Errorf("spec without %s: mismatch %q", migC, why)
	}
	// Without MIG rentals the MIG devices are not asked for.
	if why := in.mismatch(want, "550.54.15", inv.fakeInventory); why != "" {
		t.Errorf("MIG rentals off: mismatch %q", why)
	}
}
