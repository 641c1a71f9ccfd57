package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"golang.org/x/sys/unix"
)

// The dry run (--mock) stands go-nvml's dgxh100 mock (8 × H100 80GB,
// driver 550.54.15) in for NVML and a fake driver root in for the driver's
// files, so that every stage but the container one runs on a machine
// without a GPU, through the same code as on a real one.

// nvidiaMajor is the NVIDIA driver's fixed character major (/dev/nvidiaN is
// 195:N), which the CDI verification recognises GPU nodes by.
const nvidiaMajor = 195

// mockUUID is the UUID of the mock's GPU with the given minor number. The
// mock draws random UUIDs; fixed ones let the fake nvidia-smi, a separate
// process, name the same GPUs.
func mockUUID(minor int) string {
	return fmt.Sprintf("GPU-%08x-0000-4000-8000-%012x", 0x4100+minor, minor)
}

// mockNVML is dgxh100 completed with what the inventory, nvcdi and the
// health watcher ask of NVML that the mock leaves out (it panics there).
func mockNVML() nvml.Interface {
	lib := dgxh100.New()
	for _, d := range lib.Devices {
		completeMockDevice(d.(*server.Device))
	}
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return &mock.EventSet{}, nvml.SUCCESS }
	lib.EventSetFreeFunc = func(nvml.EventSet) nvml.Return { return nvml.SUCCESS }
	// No event ever comes: NVML's wait times out; shortened so that a
	// cancelled watcher ends quickly.
	lib.EventSetWaitFunc = func(_ nvml.EventSet, timeoutMs uint32) (nvml.EventData, nvml.Return) {
		time.Sleep(min(time.Duration(timeoutMs)*time.Millisecond, 100*time.Millisecond))
		return nvml.EventData{}, nvml.ERROR_TIMEOUT
	}
	return lib
}

func completeMockDevice(d *server.Device) {
	d.UUID = mockUUID(d.Minor)
	d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		p := nvml.PciInfo{PciDeviceId: d.Config.PciDeviceId}
		for i := range min(len(d.PciBusID), len(p.BusId)-1) {
			p.BusId[i] = int8(d.PciBusID[i])
		}
		return p, nvml.SUCCESS
	}
	d.GetCurrPcieLinkGenerationFunc = func() (int, nvml.Return) { return 5, nvml.SUCCESS }
	d.GetMaxPcieLinkGenerationFunc = func() (int, nvml.Return) { return 5, nvml.SUCCESS }
	d.GetCurrPcieLinkWidthFunc = func() (int, nvml.Return) { return 16, nvml.SUCCESS }
	d.GetMaxPcieLinkWidthFunc = func() (int, nvml.Return) { return 16, nvml.SUCCESS }
	d.GetPowerManagementLimitFunc = func() (uint32, nvml.Return) { return 700_000, nvml.SUCCESS }
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 71_000, nvml.SUCCESS }
	d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 33, nvml.SUCCESS }
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.SUCCESS }
	d.GetEccModeFunc = func() (nvml.EnableState, nvml.EnableState, nvml.Return) {
		return nvml.FEATURE_ENABLED, nvml.FEATURE_ENABLED, nvml.SUCCESS
	}
	// MIG is disabled on every mock GPU, so nvcdi finds no MIG device.
	d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 0, nvml.SUCCESS }
	d.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return false, nvml.SUCCESS }
	d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
		return uint64(nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError), nvml.SUCCESS
	}
	d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
}

// makeFakeDriverRoot lays out what nvcdi looks for in a driver root:
// the versioned libcuda and libnvidia-ml of the mock's driver, the device
// nodes (195:N for each GPU, nvidiactl, nvidia-uvm), and, when smi is set,
// an nvidia-smi. Creating device nodes needs root (mknod).
func makeFakeDriverRoot(dir, driverVersion string, gpus int, smi string) error {
	libDir := filepath.Join(dir, "usr/lib/x86_64-linux-gnu")
	if err := os.MkdirAll(libDir, 0o755); err != nil {
		return err
	}
	for _, lib := range []string{"libcuda.so.", "libnvidia-ml.so."} {
		if err := os.WriteFile(filepath.Join(libDir, lib+driverVersion), nil, 0o644); err != nil {
			return err
		}
	}
	dev := filepath.Join(dir, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		return err
	}
	type node struct {
		name         string
		major, minor uint32
	}
	nodes := []node{{"nvidiactl", nvidiaMajor, 255}, {"nvidia-uvm", 510, 0}}
	for i := range gpus {
		nodes = append(nodes, node{fmt.Sprintf("nvidia%d", i), nvidiaMajor, uint32(i)})
	}
	for _, n := range nodes {
		if err := unix.Mknod(filepath.Join(dev, n.name), unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("create fake device node %s (needs root): %w", n.name, err)
		}
	}
	if smi != "" {
		bin := filepath.Join(dir, "usr/bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			return err
		}
		if err := copyFile(smi, filepath.Join(bin, "nvidia-smi"), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// fakeSMI is what the check's own binary does when run as nvidia-smi from
// a fake driver root inside a container: like `nvidia-smi -L`, it lists the
// GPUs whose device nodes it can see, naming them with the mock's UUIDs.
// Being a dynamically linked program, it also proves that the image's C
// library runs what the driver's spec mounts.
func fakeSMI(args []string) int {
	if len(args) != 1 || args[0] != "-L" {
		fmt.Fprintln(os.Stderr, "fake nvidia-smi: only -L is supported")
		return 2
	}
	entries, err := os.ReadDir("/dev")
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake nvidia-smi:", err)
		return 9
	}
	var minors []int
	for _, e := range entries {
		if n, ok := gpuNodeMinor(e.Name()); ok {
			minors = append(minors, n)
		}
	}
	if len(minors) == 0 {
		fmt.Println("No devices found.")
		return 6
	}
	sort.Ints(minors)
	for i, m := range minors {
		fmt.Printf("GPU %d: NVIDIA H100 80GB HBM3 (UUID: %s)\n", i, mockUUID(m))
	}
	return 0
}

// gpuNodeMinor parses "nvidiaN", a whole GPU's device node.
func gpuNodeMinor(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "nvidia")
	if !ok || rest == "" || strings.TrimLeft(rest, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}
