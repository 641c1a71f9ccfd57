package cdi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/testenv"
)

// newMockNVML is the dgxa100 fake (8 A100s, driver 550.54.15) with the
// device methods nvcdi calls that the fake leaves unimplemented (it panics
// on those), as nvidia-container-toolkit's own tests add them.
func newMockNVML() *dgxa100.Server {
	lib := dgxa100.New()
	for i, d := range lib.Devices {
		dev := d.(*dgxa100.Device)
		dev.GetIndexFunc = func() (int, nvml.Return) { return i, nvml.SUCCESS }
		dev.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 0, nvml.SUCCESS }
		dev.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return false, nvml.SUCCESS }
	}
	return lib
}

// driverRoot is a fake driver installation: what nvcdi needs to find is
// the versioned libcuda and libnvidia-ml (it fails without libcuda, whose
// directory it takes as the driver's library directory) and, for device
// nodes in the spec, character devices named /dev/nvidiaN after each GPU's
// minor number. Those need mknod; without the privilege the spec has no
// device nodes and the caller is told.
type driverRoot struct {
	dir      string
	hook     string
	devNodes bool
}

func newDriverRoot(t *testing.T, gpus int, versions ...string) *driverRoot {
	t.Helper()
	r := &driverRoot{dir: t.TempDir()}
	for _, v := range versions {
		r.addDriver(t, v)
	}
	dev := filepath.Join(r.dir, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	type node struct {
		name         string
		major, minor uint32
	}
	nodes := []node{{"nvidiactl", nvidiaMajor, 255}, {"nvidia-uvm", 510, 0}} // uvm's major is dynamic
	for i := range gpus {
		nodes = append(nodes, node{fmt.Sprintf("nvidia%d", i), nvidiaMajor, uint32(i)})
	}
	r.devNodes = true
	for _, n := range nodes {
		if err := unix.Mknod(filepath.Join(dev, n.name), unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			t.Logf("cannot create device nodes (%v); the generated spec will have none", err)
			r.devNodes = false
			break
		}
	}
	// The hook binary the spec names must exist; it is never run here.
	r.hook = filepath.Join(r.dir, "usr/bin/nvidia-cdi-hook")
	if err := os.MkdirAll(filepath.Dir(r.hook), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.hook, []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *driverRoot) addDriver(t *testing.T, version string) {
	t.Helper()
	libDir := filepath.Join(r.dir, "usr/lib/x86_64-linux-gnu")
	if err := os.MkdirAll(libDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, lib := range []string{"libcuda.so.", "libnvidia-ml.so."} {
		if err := os.WriteFile(filepath.Join(libDir, lib+version), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func (r *driverRoot) options(outDir string) GenerateOptions {
	return GenerateOptions{
		OutDir: outDir, DriverRoot: r.dir, HookPath: r.hook,
		// nvsandboxutils would load the real host's library, if any, and
		// describe its GPUs rather than the fake's.
		nvcdiOptions: []nvcdi.Option{nvcdi.WithFeatureFlags(nvcdi.FeatureDisableNvsandboxUtils)},
	}
}

func openInventory(t *testing.T, lib nvml.Interface) *gpu.Inventory {
	t.Helper()
	inv, err := gpu.Open(lib, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

func inventoryUUIDs(inv Inventory) []string {
	var out []string
	for _, g := range inv.GPUs() {
		out = append(out, g.UUID)
	}
	slices.Sort(out)
	return out
}

func TestEnsureNVIDIASpecWithMockNVML(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	ctx := context.Background()
	lib := newMockNVML()
	root := newDriverRoot(t, len(lib.Devices), "550.54.15")
	static, outDir := t.TempDir(), t.TempDir()
	in, _, logs := newTestInjector(t, []string{static, outDir}, root.hook)
	inv := openInventory(t, lib)
	if len(inv.GPUs()) != 8 {
		t.Fatalf("inventory has %d GPUs, want the fake's 8", len(inv.GPUs()))
	}
	path := filepath.Join(outDir, GeneratedSpecFile)

	generated, err := in.EnsureNVIDIASpec(ctx, inv, lib, root.options(outDir))
	if err != nil || !generated {
		t.Fatalf("EnsureNVIDIASpec = %v, %v, want generated; logs:\n%s", generated, err, logs)
	}
	raw := checkGeneratedFile(t, path, inventoryUUIDs(inv), "550.54.15")
	if problems := in.hooks.specProblems(raw, path); len(problems) != 0 {
		t.Errorf("generated spec breaks the hook policy: %v", problems)
	}

	// The same inventory: nothing to do, the file is left as it is.
	before, _ := os.Stat(path)
	if generated, err := in.EnsureNVIDIASpec(ctx, inv, lib, root.options(outDir)); err != nil || generated {
		t.Errorf("second EnsureNVIDIASpec = %v, %v, want not generated", generated, err)
	}
	if after, _ := os.Stat(path); !after.ModTime().Equal(before.ModTime()) {
		t.Error("spec file rewritten although it matched")
	}

	uuids := inventoryUUIDs(inv)
	if root.devNodes {
		t.Run("inject generated spec", func(t *testing.T) {
			byUUID := map[string]gpu.GPU{}
			for _, g := range inv.GPUs() {
				byUUID[g.UUID] = g
			}
			req := []string{uuids[1], uuids[5]}
			s, err := inject(t, in, req)
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"/dev/nvidia-uvm", "/dev/nvidiactl"}
			for _, u := range req {
				want = append(want, fmt.Sprintf("/dev/nvidia%d", byUUID[u].MinorNumber))
			}
			slices.Sort(want)
			if got := devicePaths(s); !slices.Equal(got, want) {
				t.Errorf("device nodes %v, want %v", got, want)
			}
		})
	}

	// A driver upgrade: NVML reports the new version, its libraries appear.
	root.addDriver(t, "560.35.03")
	lib.SystemGetDriverVersionFunc = func() (string, nvml.Return) { return "560.35.03", nvml.SUCCESS }
	inv = openInventory(t, lib)
	if generated, err := in.EnsureNVIDIASpec(ctx, inv, lib, root.options(outDir)); err != nil || !generated {
		t.Fatalf("EnsureNVIDIASpec after a driver change = %v, %v, want generated", generated, err)
	}
	checkGeneratedFile(t, path, uuids, "560.35.03")

	// A GPU gone: the spec must not offer it any more.
	removed, _ := lib.Devices[7].GetUUID()
	lib.Devices = lib.Devices[:7]
	inv = openInventory(t, lib)
	if generated, err := in.EnsureNVIDIASpec(ctx, inv, lib, root.options(outDir)); err != nil || !generated {
		t.Fatalf("EnsureNVIDIASpec after a GPU change = %v, %v, want generated", generated, err)
	}
	checkGeneratedFile(t, path, inventoryUUIDs(inv), "560.35.03")
	if _, err := in.SpecOpts([]string{removed}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("injecting the removed GPU = %v, want FailedPrecondition", err)
	}
}

// checkGeneratedFile reads the spec as any CDI consumer would and checks
// what EnsureNVIDIASpec promises of it.
func checkGeneratedFile(t *testing.T, path string, uuids []string, driver string) *cdispec.Spec {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("spec mode %v, want 0644", fi.Mode().Perm())
	}
	spec, err := cdilib.ReadSpec(path, 0) // the CDI library's own parsing and validation
	if err != nil {
		t.Fatalf("CDI library refuses the generated spec: %v", err)
	}
	if err := cdispec.ValidateVersion(spec.Spec); err != nil {
		t.Error(err)
	}
	if spec.Kind != Kind {
		t.Errorf("kind %q", spec.Kind)
	}
	var names []string
	for _, d := range spec.Devices {
		names = append(names, d.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, uuids) {
		t.Errorf("device names %v, want exactly the GPU UUIDs %v (no all, no indexes)", names, uuids)
	}
	if got := spec.Annotations[DriverVersionAnnotation]; got != driver {
		t.Errorf("recorded driver %q, want %q", got, driver)
	}
	if got := specDriverVersion(spec.Spec); got != driver {
		t.Errorf("specDriverVersion = %q, want %q", got, driver)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	return spec.Spec
}

// fakeInventory is an inventory without NVML behind it.
type fakeInventory struct {
	driver string
	gpus   []gpu.GPU
}

func (f fakeInventory) DriverVersion() string { return f.driver }
func (f fakeInventory) GPUs() []gpu.GPU       { return f.gpus }

func TestEnsureNVIDIASpecDoesNothingWithoutGPUs(t *testing.T) {
	t.Parallel()
	outDir := t.TempDir()
	in, _, _ := newTestInjector(t, []string{outDir})
	for name, tc := range map[string]struct {
		inv Inventory
		lib nvml.Interface
	}{
		"no NVML":       {fakeInventory{}, nil},
		"no GPUs":       {fakeInventory{driver: "550.54.15"}, newMockNVML()},
		"only MIG GPUs": {fakeInventory{driver: "550.54.15", gpus: []gpu.GPU{{UUID: fakeUUIDs()[0], MIGMode: gpu.MIGEnabled}}}, newMockNVML()},
	} {
		generated, err := in.EnsureNVIDIASpec(context.Background(), tc.inv, tc.lib, GenerateOptions{OutDir: outDir})
		if err != nil || generated {
			t.Errorf("%s: EnsureNVIDIASpec = %v, %v, want nothing done", name, generated, err)
		}
	}
	if entries, _ := os.ReadDir(outDir); len(entries) != 0 {
		t.Errorf("files written on a host without GPUs: %v", entries)
	}
}

func TestEnsureNVIDIASpecRefusals(t *testing.T) {
	t.Parallel()
	lib := newMockNVML()
	inv := openInventory(t, lib)
	root := newDriverRoot(t, 0, "550.54.15")
	outDir := t.TempDir()
	in, _, _ := newTestInjector(t, []string{outDir}, root.hook)
	ctx := context.Background()

	o := root.options(t.TempDir())
	if _, err := in.EnsureNVIDIASpec(ctx, inv, lib, o); !errdefs.IsInvalidArgument(err) {
		t.Errorf("output dir outside the spec dirs = %v, want InvalidArgument", err)
	}
	o = root.options(outDir)
	o.HookPath = "/opt/hook"
	if _, err := in.EnsureNVIDIASpec(ctx, inv, lib, o); !errdefs.IsInvalidArgument(err) {
		t.Errorf("hook path outside the allowlist = %v, want InvalidArgument", err)
	}
	in2, _, _ := newTestInjector(t, []string{outDir}, root.hook+"-missing")
	o = root.options(outDir)
	o.HookPath = root.hook + "-missing"
	if _, err := in2.EnsureNVIDIASpec(ctx, inv, lib, o); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "nvidia-cdi-hook-missing") {
		t.Errorf("missing hook binary = %v, want FailedPrecondition naming it", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := in.EnsureNVIDIASpec(cancelled, inv, lib, root.options(outDir)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context = %v", err)
	}
	// A panic inside nvcdi (here: a fake missing a method) is an error.
	broken := dgxa100.New()
	if _, err := in.EnsureNVIDIASpec(ctx, openInventory(t, broken), broken, root.options(outDir)); !errdefs.IsInternal(err) {
		t.Errorf("nvcdi panic = %v, want Internal", err)
	}
	if entries, _ := os.ReadDir(outDir); len(entries) != 0 {
		t.Errorf("files written by refused runs: %v", entries)
	}
}
