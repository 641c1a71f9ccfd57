package cdi

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/testenv"
)

// inventoryOf gives uuids[i] minor number minors[i].
func inventoryOf(driver string, uuids []string, minors ...int) fakeInventory {
	inv := fakeInventory{driver: driver}
	for i, u := range uuids {
		inv.gpus = append(inv.gpus, gpu.GPU{Index: i, UUID: u, MinorNumber: minors[i]})
	}
	return inv
}

func newInjectorWith(t *testing.T, cfg Config) (*Injector, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return in, logs
}

func listenUnix(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

// TestGeneratedSpecMountsNoDaemonSockets: on a driver root where
// nvidia-persistenced and nvidia-fabricmanager listen, the generated spec,
// and so every GPU container, gets neither socket.
func TestGeneratedSpecMountsNoDaemonSockets(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	lib := newMockNVML()
	root := newDriverRoot(t, len(lib.Devices), "550.54.15")
	for _, s := range []string{"run/nvidia-persistenced/socket", "run/nvidia-fabricmanager/socket"} {
		listenUnix(t, filepath.Join(root.dir, s))
	}
	outDir := t.TempDir()
	inv := openInventory(t, lib)
	in, logs := newInjectorWith(t, Config{SpecDirs: []string{outDir}, AllowedHookPaths: []string{root.hook}, DeviceMajors: []int64{nvidiaMajor, 510}})
	if _, err := in.EnsureNVIDIASpec(context.Background(), inv, lib, root.options(outDir)); err != nil {
		t.Fatalf("EnsureNVIDIASpec: %v\n%s", err, logs)
	}
	data, err := os.ReadFile(filepath.Join(outDir, GeneratedSpecFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "socket") {
		t.Fatalf("the generated spec mounts a daemon socket:\n%s", data)
	}
	if !root.devNodes {
		return
	}
	uuids := inventoryUUIDs(inv)
	plan, err := in.Plan(uuids[:2])
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range plan.Mounts {
		if strings.Contains(m.HostPath, "socket") || strings.Contains(m.ContainerPath, "socket") {
			t.Errorf("plan mounts %s -> %s", m.HostPath, m.ContainerPath)
		}
	}
}

// TestHandWrittenSpecRefusals: whatever a spec file says, nothing but the
// GPUs' NVIDIA nodes and read-only driver files reaches a container; each
// refusal names what it refused.
func TestHandWrittenSpecRefusals(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	uuids := fakeUUIDs()
	sockDir := t.TempDir()
	sock := filepath.Join(sockDir, "nvidia-persistenced", "socket")
	listenUnix(t, sock)
	mount := func(host string, opts ...string) func(*cdispec.Spec) {
		return func(s *cdispec.Spec) {
			s.ContainerEdits.Mounts = append(s.ContainerEdits.Mounts, &cdispec.Mount{HostPath: host, ContainerPath: "/run/x", Options: opts})
		}
	}
	node := func(n cdispec.DeviceNode) func(*cdispec.Spec) {
		return func(s *cdispec.Spec) {
			s.Devices[0].ContainerEdits.DeviceNodes = append(s.Devices[0].ContainerEdits.DeviceNodes, &n)
		}
	}
	for _, tc := range []struct {
		name string
		edit func(*cdispec.Spec)
		// nvidiaOnly builds the injector with the default (NVIDIA) majors
		// rather than the stand-ins' major 1.
		nvidiaOnly bool
		want       string
	}{
		{"a daemon socket", mount(sock, "ro", "bind"), false, "mount " + sock + " -> /run/x: is a socket"},
		{"a directory", mount(sockDir, "ro", "rbind"), false, "mount " + sockDir + " -> /run/x: is a directory"},
		{"a writable driver file", mount(fakeDriverFile("libnvidia-ml.so.550.54.15"), "rw", "bind"), false, "libnvidia-ml.so.550.54.15 -> /run/x: not read-only"},
		{"a block device", node(cdispec.DeviceNode{Path: "/dev/sda", Type: "b", Major: 8, Minor: 0}), false, "device node /dev/sda is a block device"},
		{"/dev/mem", node(cdispec.DeviceNode{Path: "/dev/mem", Type: "c", Major: 1, Minor: 1}), true, "device node /dev/mem (c 1:1) is not an NVIDIA device"},
		{"a net device", func(s *cdispec.Spec) {
			s.Version = "1.1.0"
			s.Devices[0].ContainerEdits.NetDevices = []*cdispec.LinuxNetDevice{{HostInterfaceName: "eth0", Name: "eth1"}}
		}, false, "network device eth0"},
		{"an extra group", func(s *cdispec.Spec) { s.Version = "0.7.0"; s.ContainerEdits.AdditionalGIDs = []uint32{0} }, false, "additional groups [0]"},
		{"nvidia-ctk runtime configure", func(s *cdispec.Spec) {
			s.ContainerEdits.Hooks = append(s.ContainerEdits.Hooks, &cdispec.Hook{HookName: cdilib.CreateRuntimeHook, Path: "/usr/bin/nvidia-ctk",
				Args: []string{"nvidia-ctk", "runtime", "configure"}, Env: []string{"X=1"}})
		}, false, "arguments are not `nvidia-ctk hook <subcommand>`"},
		{"an unknown hook subcommand", func(s *cdispec.Spec) {
			s.ContainerEdits.Hooks = append(s.ContainerEdits.Hooks, &cdispec.Hook{HookName: cdilib.CreateContainerHook, Path: "/usr/bin/nvidia-cdi-hook",
				Args: []string{"nvidia-cdi-hook", "chmod", "--mode", "777", "--path", "/"}, Env: []string{"X=1"}})
		}, false, `subcommand "chmod"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			raw := gpuSpec(uuids)
			tc.edit(raw)
			writeSpec(t, dir, "nvidia.json", raw)
			cfg := Config{SpecDirs: []string{dir}, DeviceMajors: []int64{1, nvidiaMajor}}
			if tc.nvidiaOnly {
				cfg.DeviceMajors = nil
			}
			in, _ := newInjectorWith(t, cfg)
			_, err := in.Plan(uuids[:1])
			if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Plan = %v, want FailedPrecondition naming %q", err, tc.want)
			}
		})
	}

	t.Run("a spec directory writable by others", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		writeSpec(t, dir, "nvidia.json", gpuSpec(uuids))
		in, _ := newInjectorWith(t, Config{SpecDirs: []string{dir}, DeviceMajors: []int64{1, nvidiaMajor}})
		if _, err := in.Plan(uuids[:1]); err != nil {
			t.Fatalf("private spec directory: %v", err)
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		_, err := in.Plan(uuids[:1])
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "CDI spec directory "+dir+" is writable by group or others") {
			t.Fatalf("Plan = %v, want a refusal naming %s", err, dir)
		}
	})
	t.Run("a spec file writable by others", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		path := writeSpec(t, dir, "nvidia.json", gpuSpec(uuids))
		if err := os.Chmod(path, 0o666); err != nil {
			t.Fatal(err)
		}
		in, _ := newInjectorWith(t, Config{SpecDirs: []string{dir}, DeviceMajors: []int64{1, nvidiaMajor}})
		_, err := in.Plan(uuids[:1])
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "CDI spec file "+path) {
			t.Fatalf("Plan = %v, want a refusal naming %s", err, path)
		}
	})
}

// TestSwappedMinorsRefused: a static spec written before two GPUs swapped
// minors would hand each tenant the other's GPU; the injection is refused
// and no plan comes out.
func TestSwappedMinorsRefused(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	uuids := fakeUUIDs()[:2]
	dir := t.TempDir()
	writeSpec(t, dir, "nvidia.json", gpuSpec(uuids)) // uuids[0] -> /dev/nvidia0, uuids[1] -> /dev/nvidia1

	in, _ := newInjectorWith(t, Config{SpecDirs: []string{dir}, DeviceMajors: []int64{1, nvidiaMajor}, Inventory: inventoryOf("550.54.15", uuids, 0, 1)})
	if plan, err := in.Plan(uuids[:1]); err != nil || len(plan.Devices) != 1 || plan.Devices[0].Path != "/dev/nvidia0" {
		t.Fatalf("matching minors: plan %+v, %v", plan, err)
	}

	swapped, _ := newInjectorWith(t, Config{SpecDirs: []string{dir}, DeviceMajors: []int64{1, nvidiaMajor}, Inventory: inventoryOf("550.54.15", uuids, 1, 0)})
	for i, u := range uuids {
		plan, err := swapped.Plan([]string{u})
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "NVML gives that GPU minor number") {
			t.Fatalf("GPU %d with swapped minors: plan %+v, %v; want a refusal", i, plan, err)
		}
		if len(plan.Devices) != 0 {
			t.Fatalf("a plan came out of a refused injection: %+v", plan)
		}
	}
}

// TestDriverChangeNoticed: a spec for another driver, a kernel module that
// changed since the agent started, and driver files gone from disk each
// stop the injection with an error that says so.
func TestDriverChangeNoticed(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	uuids := fakeUUIDs()[:1]
	spec := func(t *testing.T) string {
		dir := t.TempDir()
		writeSpec(t, dir, "nvidia.json", gpuSpec(uuids)) // mounts libcuda.so.550.54.15
		return dir
	}
	t.Run("spec for another driver", func(t *testing.T) {
		t.Parallel()
		in, _ := newInjectorWith(t, Config{SpecDirs: []string{spec(t)}, DeviceMajors: []int64{1, nvidiaMajor}, Inventory: inventoryOf("560.35.03", uuids, 0)})
		_, err := in.Plan(uuids)
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "is for NVIDIA driver 550.54.15, the host has 560.35.03") {
			t.Fatalf("Plan = %v", err)
		}
	})
	t.Run("kernel module changed while running", func(t *testing.T) {
		t.Parallel()
		version := filepath.Join(t.TempDir(), "version")
		write := func(v string) {
			line := "NVRM version: NVIDIA UNIX x86_64 Kernel Module  " + v + "  Tue Mar  5 22:38:43 UTC 2024\nGCC version:  gcc version 12.2.0\n"
			if err := os.WriteFile(version, []byte(line), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		write("550.54.15")
		in, _ := newInjectorWith(t, Config{SpecDirs: []string{spec(t)}, DeviceMajors: []int64{1, nvidiaMajor},
			Inventory: inventoryOf("550.54.15", uuids, 0), DriverVersionFile: version})
		if _, err := in.Plan(uuids); err != nil {
			t.Fatalf("same driver: %v", err)
		}
		write("560.35.03")
		if _, err := in.Plan(nil); err != nil {
			t.Fatalf("a CPU rental after the module changed: %v", err)
		}
		_, err := in.Plan(uuids)
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "the loaded NVIDIA driver is 560.35.03") {
			t.Fatalf("Plan after the module changed = %v", err)
		}
	})
	t.Run("driver files gone", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		raw := gpuSpec(uuids)
		gone := filepath.Join(t.TempDir(), "libcuda.so.550.54.15")
		os.WriteFile(gone, []byte("lib"), 0o644)
		raw.ContainerEdits.Mounts[0].HostPath = gone
		writeSpec(t, dir, "nvidia.json", raw)
		in, _ := newInjectorWith(t, Config{SpecDirs: []string{dir}, DeviceMajors: []int64{1, nvidiaMajor}, Inventory: inventoryOf("550.54.15", uuids, 0)})
		if _, err := in.Plan(uuids); err != nil {
			t.Fatalf("files present: %v", err)
		}
		os.Remove(gone)
		_, err := in.Plan(uuids)
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), gone+", which no longer exists") {
			t.Fatalf("Plan after the driver files went = %v", err)
		}
	})
}

// TestWatchDriverNoticesAChangedModule: a driver swapped under the running
// agent is noticed without any injection asking, and said once.
func TestWatchDriverNoticesAChangedModule(t *testing.T) {
	t.Parallel()
	uuids := fakeUUIDs()[:1]
	version := filepath.Join(t.TempDir(), "version")
	os.WriteFile(version, []byte("NVRM version: NVIDIA UNIX x86_64 Kernel Module  560.35.03  Tue\n"), 0o644)
	in, logs := newInjectorWith(t, Config{SpecDirs: []string{t.TempDir()}, Inventory: inventoryOf("550.54.15", uuids, 0),
		DriverVersionFile: version, NVML: newMockNVML()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.WatchDriver(ctx, time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	for i := 0; !strings.Contains(logs.String(), "the NVIDIA driver changed while the agent runs"); i++ {
		if i > 1000 {
			t.Fatalf("driver change not noticed; logs:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if n := strings.Count(logs.String(), "the NVIDIA driver changed"); n != 1 {
		t.Errorf("the change was logged %d times, want once", n)
	}
}

// TestStaleStaticSpecIsRegenerated: with NVML at hand, a static spec whose
// GPU nodes no longer match the GPUs' minors is replaced by a generated one
// before the injection, and the plan holds the node NVML gives the GPU.
func TestStaleStaticSpecIsRegenerated(t *testing.T) {
	testenv.Require(t) // root: mknod for the fake driver's device nodes
	t.Parallel()
	lib := newMockNVML()
	root := newDriverRoot(t, len(lib.Devices), "550.54.15")
	if !root.devNodes {
		t.Skip("needs mknod for the fake driver's device nodes")
	}
	inv := openInventory(t, lib)
	gpus := inv.GPUs()
	// A static spec from before two GPUs swapped places.
	raw := gpuSpec(nil)
	raw.ContainerEdits.Mounts[0].HostPath = filepath.Join(root.dir, "usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15")
	raw.ContainerEdits.Hooks[0].Path = root.hook
	for i, g := range gpus {
		m := g.MinorNumber
		if i < 2 {
			m = gpus[1-i].MinorNumber
		}
		raw.Devices = append(raw.Devices, cdispec.Device{Name: g.UUID, ContainerEdits: cdispec.ContainerEdits{
			DeviceNodes: []*cdispec.DeviceNode{{Path: fmt.Sprintf("/dev/nvidia%d", m), Type: "c", Major: nvidiaMajor, Minor: int64(m)}}}})
	}
	static, outDir := t.TempDir(), t.TempDir()
	writeSpec(t, static, "nvidia.yaml", raw)
	in, logs := newInjectorWith(t, Config{SpecDirs: []string{static, outDir}, AllowedHookPaths: []string{root.hook},
		DeviceMajors: []int64{nvidiaMajor, 510}, Inventory: inv, NVML: lib, Generate: root.options(outDir)})

	plan, err := in.Plan([]string{gpus[0].UUID})
	if err != nil {
		t.Fatalf("Plan: %v\n%s", err, logs)
	}
	want := fmt.Sprintf("/dev/nvidia%d", gpus[0].MinorNumber)
	var nodes []string
	for _, d := range plan.Devices {
		nodes = append(nodes, d.Path)
		if d.Path == fmt.Sprintf("/dev/nvidia%d", gpus[1].MinorNumber) {
			t.Fatalf("the other GPU's node was injected: %v", plan.Devices)
		}
	}
	if !slices.Contains(nodes, want) {
		t.Fatalf("plan nodes %v, want %s", nodes, want)
	}
	if _, err := os.Stat(filepath.Join(outDir, GeneratedSpecFile)); err != nil {
		t.Fatalf("no spec was generated: %v", err)
	}
}
