package cdi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/internal/testenv"
)

// TestEnsureNVIDIASpecAndForeignSpecs: a spec the agent did not write is
// used when it fits, and never overwritten or deleted when it does not.
func TestEnsureNVIDIASpecAndForeignSpecs(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	lib := newMockNVML()
	inv := openInventory(t, lib)
	root := newDriverRoot(t, 0, "550.54.15")
	ctx := context.Background()

	// What nvidia-ctk writes: index, UUID and "all" devices, no annotation,
	// the versioned libcuda among its mounts.
	ctkSpec := func(driver string) *cdispec.Spec {
		raw := gpuSpec(nil)
		raw.ContainerEdits.Mounts[0].HostPath = filepath.Join(root.dir, "usr/lib/x86_64-linux-gnu/libcuda.so."+driver)
		raw.ContainerEdits.Hooks[0].Path = root.hook
		for i, g := range inv.GPUs() {
			m := g.MinorNumber
			edits := cdispec.ContainerEdits{DeviceNodes: []*cdispec.DeviceNode{{Path: fmt.Sprintf("/dev/nvidia%d", m), Type: "c", Major: nvidiaMajor, Minor: int64(m)}}}
			raw.Devices = append(raw.Devices, cdispec.Device{Name: fmt.Sprint(i), ContainerEdits: edits}, cdispec.Device{Name: g.UUID, ContainerEdits: edits})
		}
		raw.Devices = append(raw.Devices, cdispec.Device{Name: "all", ContainerEdits: raw.Devices[0].ContainerEdits})
		return raw
	}

	t.Run("fitting spec in /etc/cdi is used", func(t *testing.T) {
		t.Parallel()
		static, outDir := t.TempDir(), t.TempDir()
		writeSpec(t, static, "nvidia.yaml", ctkSpec("550.54.15"))
		in, _, logs := newTestInjector(t, []string{static, outDir}, root.hook)
		if generated, err := in.EnsureNVIDIASpec(ctx, inv, lib, root.options(outDir)); err != nil || generated {
			t.Errorf("EnsureNVIDIASpec = %v, %v, want the existing spec used; logs:\n%s", generated, err, logs)
		}
	})
	t.Run("stale spec in /etc/cdi is shadowed", func(t *testing.T) {
		t.Parallel()
		static, outDir := t.TempDir(), t.TempDir()
		stale := writeSpec(t, static, "nvidia.yaml", ctkSpec("535.00.01"))
		in, _, _ := newTestInjector(t, []string{static, outDir}, root.hook)
		if generated, err := in.EnsureNVIDIASpec(ctx, inv, lib, root.options(outDir)); err != nil || !generated {
			t.Errorf("EnsureNVIDIASpec = %v, %v, want a new spec", generated, err)
		}
		if _, err := os.Stat(stale); err != nil {
			t.Errorf("stale foreign spec touched: %v", err)
		}
	})
	t.Run("stale spec in the output dir conflicts", func(t *testing.T) {
		t.Parallel()
		outDir := t.TempDir()
		stale := writeSpec(t, outDir, "nvidia.yaml", ctkSpec("535.00.01"))
		in, _, _ := newTestInjector(t, []string{outDir}, root.hook)
		generated, err := in.EnsureNVIDIASpec(ctx, inv, lib, root.options(outDir))
		if !generated || !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), stale) {
			t.Errorf("EnsureNVIDIASpec = %v, %v, want generated and an error naming %s", generated, err, stale)
		}
		if _, err := os.Stat(stale); err != nil {
			t.Errorf("stale foreign spec touched: %v", err)
		}
	})
}

func TestSpecMismatch(t *testing.T) {
	t.Parallel()
	uuids := fakeUUIDs()
	annotated := func(driver string, names []string) *cdispec.Spec {
		raw := gpuSpec(names)
		raw.Annotations = map[string]string{DriverVersionAnnotation: driver}
		return raw
	}
	tests := []struct {
		name string
		spec *cdispec.Spec
		want string // "" for a match
	}{
		{"match", annotated("550.54.15", uuids), ""},
		{"driver from libcuda mount", gpuSpec(uuids), ""},
		{"other driver", annotated("535.00.01", uuids), `records driver "535.00.01"`},
		{"GPU missing", annotated("550.54.15", uuids[:3]), "names GPUs"},
		{"extra GPU", annotated("550.54.15", append(slices.Clone(uuids), "GPU-99999999-9999-4999-8999-999999999999")), "names GPUs"},
		{"unsafe hook", func() *cdispec.Spec {
			raw := annotated("550.54.15", uuids)
			raw.ContainerEdits.Hooks[0].Env = nil
			return raw
		}(), "no explicit env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writeSpec(t, dir, "nvidia.json", tt.spec)
			in, _, _ := newTestInjector(t, []string{dir})
			in.refresh()
			got := in.specMismatch(slices.Sorted(slices.Values(uuids)), "550.54.15")
			if (got == "") != (tt.want == "") || !strings.Contains(got, tt.want) {
				t.Errorf("specMismatch = %q, want %q", got, tt.want)
			}
		})
	}
}
