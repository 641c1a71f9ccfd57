package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/gpu/gpumock"
)

// mockNodeMajor is the character major of the mock GPUs' device nodes: one
// reserved for local use, with no driver behind it, so a rental's
// /dev/nvidiaN opens nothing (ENXIO) while it is injected, counted and
// confined exactly as a real GPU's node is.
const mockNodeMajor = 240

// mockCapsMajor is the character major of the stand-ins for the MIG
// devices' nvidia-caps nodes, another major reserved for local use.
const mockCapsMajor = 241

// mockDirName is the directory under STATE_DIR holding the mock machine's
// device nodes and CDI spec.
const mockDirName = "gpu-mock"

// openNVML returns the NVML the agent reads: the host's, or with GPU_MOCK
// the mock machine (also returned), refused on a host with a real NVIDIA
// driver, where a mock would hide the real GPUs. In mock mode the logger
// says so on every line.
func openNVML(cfg config, logger *slog.Logger) (nvml.Interface, *gpumock.Machine, *slog.Logger, error) {
	if cfg.GPUMock == "" {
		return nvml.New(), nil, logger, nil
	}
	if why := realNVIDIADriver("/proc", nvml.New()); why != "" {
		return nil, nil, nil, &configError{"GPU_MOCK", "a mock GPU host is refused on a host with a real NVIDIA driver: " + why}
	}
	m, err := gpumock.New(cfg.GPUMock)
	if err != nil {
		return nil, nil, nil, &configError{"GPU_MOCK", err.Error()}
	}
	logger = logger.With("gpu_mock", m.Name)
	logger.Warn("mock GPU host: GPUs, their CDI devices and their faults are simulated; nothing runs on a GPU", "machine", m.Name)
	return m, m, logger, nil
}

// realNVIDIADriver says why the host has a real NVIDIA driver, or "": the
// kernel module's /proc/driver/nvidia/version, or NVML initialising.
func realNVIDIADriver(proc string, lib nvml.Interface) (why string) {
	version := filepath.Join(proc, "driver/nvidia/version")
	if _, err := os.Stat(version); err == nil {
		return version + " exists"
	}
	defer func() {
		// go-nvml panics when it cannot load the library at all.
		if recover() != nil {
			why = ""
		}
	}()
	if lib.Init() == nvml.SUCCESS {
		lib.Shutdown()
		return "NVML initialises"
	}
	return ""
}

// useGPUMock lays out the mock machine's GPUs for injection: a device node
// per GPU under STATE_DIR (c 240:N, for /dev/nvidiaN in the container), one
// per nvidia-caps access node of each rented MIG device (c 241:N, for
// /dev/nvidia-caps/nvidia-capN) and a CDI spec naming each GPU (or MIG
// device) by UUID, recording the mock's driver version,
// and adding HOST_AGENT_GPU_MOCK to a rental's environment. It returns c
// reading only that spec, and with no NVML to regenerate it from.
func useGPUMock(stateDir string, m *gpumock.Machine, inv *gpu.Inventory, c cdi.Config) (cdi.Config, error) {
	inv.MarkMock(m.Name)
	dir := filepath.Join(stateDir, mockDirName)
	nodes, specDir := filepath.Join(dir, "dev"), filepath.Join(dir, "cdi")
	for _, d := range []string{nodes, specDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return c, fmt.Errorf("mock GPU host: %w", err)
		}
	}
	type node struct {
		Path     string `json:"path"`
		HostPath string `json:"hostPath"`
		Type     string `json:"type"`
		Major    int64  `json:"major"`
		Minor    int64  `json:"minor"`
	}
	type device struct {
		Name  string `json:"name"`
		Edits struct {
			DeviceNodes []node `json:"deviceNodes"`
		} `json:"containerEdits"`
	}
	var devices []device
	gpuNodes := map[string]node{}
	for _, g := range inv.GPUs() {
		host := filepath.Join(nodes, fmt.Sprintf("nvidia%d", g.MinorNumber))
		dev := int(unix.Mkdev(mockNodeMajor, uint32(g.MinorNumber)))
		if err := unix.Mknod(host, unix.S_IFCHR|0o666, dev); err != nil && !errors.Is(err, unix.EEXIST) {
			return c, fmt.Errorf("mock GPU host: mknod %s: %w", host, err)
		}
		n := node{Path: fmt.Sprintf("/dev/nvidia%d", g.MinorNumber), HostPath: host, Type: "c",
			Major: mockNodeMajor, Minor: int64(g.MinorNumber)}
		gpuNodes[g.UUID] = n
		if g.MIGMode == gpu.MIGEnabled {
			// As nvcdi: a GPU in MIG mode has no whole-GPU device.
			continue
		}
		d := device{Name: g.UUID}
		d.Edits.DeviceNodes = []node{n}
		devices = append(devices, d)
	}
	// A MIG device, as nvcdi writes it: its parent's node and the access
	// nodes of its GPU instance and compute instance.
	parents := map[string]int{}
	for _, g := range inv.GPUs() {
		parents[g.UUID] = g.MinorNumber
	}
	for _, mig := range inv.MIGDevices() {
		d := device{Name: mig.UUID}
		d.Edits.DeviceNodes = []node{gpuNodes[mig.ParentUUID]}
		gi, ci := gpumock.CapMinors(parents[mig.ParentUUID], mig.GPUInstanceID, mig.ComputeInstanceID)
		for _, minor := range []int{gi, ci} {
			host := filepath.Join(nodes, "nvidia-caps", fmt.Sprintf("nvidia-cap%d", minor))
			if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
				return c, fmt.Errorf("mock GPU host: %w", err)
			}
			if err := unix.Mknod(host, unix.S_IFCHR|0o444, int(unix.Mkdev(mockCapsMajor, uint32(minor)))); err != nil && !errors.Is(err, unix.EEXIST) {
				return c, fmt.Errorf("mock GPU host: mknod %s: %w", host, err)
			}
			d.Edits.DeviceNodes = append(d.Edits.DeviceNodes, node{Path: "/dev/nvidia-caps/" + filepath.Base(host), HostPath: host,
				Type: "c", Major: mockCapsMajor, Minor: int64(minor)})
		}
		devices = append(devices, d)
	}
	spec := map[string]any{
		"cdiVersion":     "0.6.0",
		"kind":           cdi.Kind,
		"annotations":    map[string]string{cdi.DriverVersionAnnotation: inv.DriverVersion()},
		"devices":        devices,
		"containerEdits": map[string]any{"env": []string{"HOST_AGENT_GPU_MOCK=" + m.Name}},
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return c, err
	}
	if err := os.WriteFile(filepath.Join(specDir, "nvidia-mock.json"), b, 0o644); err != nil {
		return c, fmt.Errorf("mock GPU host: %w", err)
	}
	c.SpecDirs = []string{specDir}
	c.DeviceMajors = []int64{mockNodeMajor, mockCapsMajor}
	c.NVML = nil
	return c, nil
}
