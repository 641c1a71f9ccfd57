package gpu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/containerd/errdefs"
)

// countingHandler counts log records, to check what is logged once.
type countingHandler struct {
	mu      sync.Mutex
	records []string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Message)
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func TestOpenWithoutLibrary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		lib  nvml.Interface
	}{
		{"library not found", &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}},
		{"loading panics", &mock.Interface{InitFunc: func() nvml.Return { panic("dlopen exploded") }}},
		{"no library given", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			logs := &countingHandler{}
			inv, err := Open(tt.lib, slog.New(logs))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if inv.Available() || inv.Len() != 0 || len(inv.GPUs()) != 0 || len(inv.Usages()) != 0 {
				t.Errorf("want an empty inventory, got available=%v gpus=%v", inv.Available(), inv.GPUs())
			}
			if inv.DriverVersion() != "" || inv.CUDADriverVersion() != "" {
				t.Errorf("versions without a driver: %q %q", inv.DriverVersion(), inv.CUDADriverVersion())
			}

			done := make(chan error, 1)
			go func() { done <- inv.WatchHealth(context.Background(), newRecorder()) }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("WatchHealth: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("WatchHealth did not return on a host without NVML")
			}

			a := NewAllocator(inv)
			if _, err := a.Reserve("i-1", Request{Count: 1}); !errdefs.IsConflict(err) || err.Error() != "requested 1 GPU, 0 free" {
				t.Errorf("Reserve on a host without GPUs: %v", err)
			}
			if free, total := a.Counts(); free != 0 || total != 0 {
				t.Errorf("Counts = %d, %d", free, total)
			}
			if err := inv.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if len(logs.records) != 1 {
				t.Errorf("want the missing library logged once, got %q", logs.records)
			}
		})
	}
}

func TestOpenInitFailure(t *testing.T) {
	t.Parallel()
	lib := &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }}
	_, err := Open(lib, testLogger(t))
	if !errdefs.IsUnavailable(err) || !errors.Is(err, nvml.ERROR_DRIVER_NOT_LOADED) {
		t.Fatalf("Open with the driver not loaded = %v, want Unavailable wrapping ERROR_DRIVER_NOT_LOADED", err)
	}
}

// TestOpenRealLibrary opens the real NVML: on a machine without the driver it
// must give zero GPUs; on one with GPUs it shows what they report.
func TestOpenRealLibrary(t *testing.T) {
	t.Parallel()
	inv, err := Open(nvml.New(), testLogger(t))
	if err != nil {
		t.Skipf("NVML present but unusable here: %v", err)
	}
	defer inv.Close()
	t.Logf("available=%v driver=%q cuda=%q", inv.Available(), inv.DriverVersion(), inv.CUDADriverVersion())
	for _, g := range inv.GPUs() {
		t.Logf("%+v", g)
	}
	for _, u := range inv.Usages() {
		t.Logf("%+v", u)
	}
	if !inv.Available() && inv.Len() != 0 {
		t.Errorf("GPUs without NVML: %v", inv.GPUs())
	}
	if inv.Len() == 0 {
		return
	}

	// On a real GPU: events register, a healthy GPU reports nothing, and
	// the watcher ends with its context.
	rec := newRecorder()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := inv.WatchHealth(ctx, rec); err != nil {
		t.Errorf("WatchHealth: %v", err)
	}
	for _, e := range rec.all() {
		t.Logf("health event: %+v", e)
	}
	a := NewAllocator(inv)
	ds, err := a.Reserve("real", Request{Count: 1})
	if err != nil || len(ds) != 1 || ds[0].UUID == "" || ds[0].PCIBusID == "" {
		t.Errorf("Reserve on real GPUs = %+v, %v", ds, err)
	}
}

func TestInventoryDGXA100(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	inv, _ := open(t, h)

	if got, want := inv.DriverVersion(), "550.54.15"; got != want {
		t.Errorf("DriverVersion = %q, want %q", got, want)
	}
	if got, want := inv.CUDADriverVersion(), "12.4"; got != want {
		t.Errorf("CUDADriverVersion = %q, want %q", got, want)
	}
	gpus := inv.GPUs()
	if len(gpus) != 8 {
		t.Fatalf("got %d GPUs, want 8", len(gpus))
	}
	for i, g := range gpus {
		want := GPU{
			Index:             i,
			UUID:              h.device(i).UUID,
			Name:              h.device(i).Config.Name,
			MemoryTotalMiB:    40960,
			MemoryTotalBytes:  40960 << 20,
			PCIBusID:          fmt.Sprintf("0000:%02x:00.0", i),
			MinorNumber:       i,
			ComputeCapability: "8.0",
			PCIeGenCurrent:    4,
			PCIeGenMax:        4,
			PCIeWidthCurrent:  8,
			PCIeWidthMax:      16,
			PowerLimitWatts:   400,
			MIGMode:           MIGDisabled,
			NUMANode:          -1, // the fake does not say
			Healthy:           true,
		}
		if g != want {
			t.Errorf("GPU %d:\n got %+v\nwant %+v", i, g, want)
		}
	}
}

func TestGPUJSON(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(GPU{})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	want := []string{"index", "uuid", "name", "memory_total_mib", "memory_total_bytes", "pci_bus_id",
		"minor_number", "compute_capability", "pcie_gen_current", "pcie_gen_max", "pcie_width_current",
		"pcie_width_max", "power_limit_watts", "mig_mode", "numa_node", "healthy", "unhealthy_reason", "held_by"}
	var got []string
	for k := range m {
		got = append(got, k)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("JSON keys\n got %v\nwant %v", got, want)
	}
}

// TestInventoryTolerantFields checks that fields NVML cannot give are zero
// and never keep a GPU out of the inventory.
func TestInventoryTolerantFields(t *testing.T) {
	t.Parallel()
	notSupported := func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	tests := []struct {
		name  string
		spoil func(d *mock.Device)
		check func(t *testing.T, g GPU)
	}{
		{
			name: "not supported",
			spoil: func(d *mock.Device) {
				d.GetCurrPcieLinkGenerationFunc = notSupported
				d.GetMaxPcieLinkGenerationFunc = notSupported
				d.GetCurrPcieLinkWidthFunc = notSupported
				d.GetMaxPcieLinkWidthFunc = notSupported
				d.GetPowerManagementLimitFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
				d.GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED }
			},
			check: func(t *testing.T, g GPU) {
				if g.PCIeGenCurrent != 0 || g.PCIeGenMax != 0 || g.PCIeWidthCurrent != 0 || g.PCIeWidthMax != 0 ||
					g.PowerLimitWatts != 0 || g.MIGMode != MIGUnsupported || !g.Healthy {
					t.Errorf("got %+v", g)
				}
			},
		},
		{
			name: "other error",
			spoil: func(d *mock.Device) {
				d.GetNameFunc = func() (string, nvml.Return) { return "", nvml.ERROR_UNKNOWN }
			},
			check: func(t *testing.T, g GPU) {
				if g.Name != "" || g.ComputeCapability != "8.0" || !g.Healthy {
					t.Errorf("got %+v", g)
				}
			},
		},
		{
			name: "method a fake does not implement",
			spoil: func(d *mock.Device) {
				d.GetPciInfoFunc = nil
				d.GetPowerManagementLimitFunc = nil
			},
			check: func(t *testing.T, g GPU) {
				if g.PCIBusID != "" || g.PowerLimitWatts != 0 || g.Name == "" {
					t.Errorf("got %+v", g)
				}
			},
		},
		{
			name: "MIG enabled",
			spoil: func(d *mock.Device) {
				d.GetMigModeFunc = func() (int, int, nvml.Return) { return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS }
			},
			check: func(t *testing.T, g GPU) {
				if g.MIGMode != MIGEnabled {
					t.Errorf("MIGMode = %q", g.MIGMode)
				}
			},
		},
		{
			name: "lost",
			spoil: func(d *mock.Device) {
				d.GetPowerManagementLimitFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
			},
			check: func(t *testing.T, g GPU) {
				if g.Healthy || g.UnhealthyReason != ReasonGPULost || g.Name == "" {
					t.Errorf("got %+v", g)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newFakeHost(t)
			tt.spoil(&h.device(5).Device)
			inv, _ := open(t, h)
			gpus := inv.GPUs()
			if len(gpus) != 8 {
				t.Fatalf("got %d GPUs, want 8", len(gpus))
			}
			tt.check(t, gpus[5])
			if !gpus[4].Healthy || gpus[4].PowerLimitWatts != 400 {
				t.Errorf("a neighbour was affected: %+v", gpus[4])
			}
		})
	}
}

// TestOpenSkipsUnaddressableGPU checks that a GPU without a handle is left
// out while the others keep their NVML indexes.
func TestOpenSkipsUnaddressableGPU(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	byIndex := h.DeviceGetHandleByIndexFunc
	h.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i == 3 {
			return nil, nvml.ERROR_UNKNOWN
		}
		return byIndex(i)
	}
	inv, a := open(t, h)
	var indexes []int
	for _, g := range inv.GPUs() {
		indexes = append(indexes, g.Index)
	}
	if want := []int{0, 1, 2, 4, 5, 6, 7}; !slices.Equal(indexes, want) {
		t.Errorf("indexes = %v, want %v", indexes, want)
	}
	if _, err := a.Reserve("i-1", Request{IDs: []string{"3"}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Reserve of the left-out GPU: %v", err)
	}
	d, err := a.Reserve("i-1", Request{IDs: []string{"4"}})
	if err != nil || d[0].UUID != h.device(4).UUID {
		t.Errorf("Reserve of index 4 = %v, %v", d, err)
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	h.device(1).GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	h.device(1).GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	h.device(1).GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED }
	inv, _ := open(t, h)

	full := Usage{
		Index: 0, UUID: h.device(0).UUID,
		UtilizationPercent: fakeUtilizationPercent, MemoryUtilizationPercent: 5,
		MemoryUsedMiB: fakeMemoryUsedBytes >> 20, MemoryUsedBytes: fakeMemoryUsedBytes,
		TemperatureC: fakeTemperatureC, PowerWatts: 123.456,
	}
	partial := Usage{
		Index: 1, UUID: h.device(1).UUID,
		MemoryUsedMiB: fakeMemoryUsedBytes >> 20, MemoryUsedBytes: fakeMemoryUsedBytes,
	}
	for _, tt := range []struct {
		id   string
		want Usage
	}{
		{"0", full},
		{h.device(0).UUID, full},
		{"1", partial},
	} {
		got, err := inv.Usage(tt.id)
		if err != nil || got != tt.want {
			t.Errorf("Usage(%q) = %+v, %v\nwant %+v", tt.id, got, err, tt.want)
		}
	}
	if _, err := inv.Usage("GPU-nope"); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "GPU-nope") {
		t.Errorf("Usage of an unknown GPU: %v", err)
	}
	if all := inv.Usages(); len(all) != 8 || all[0] != full || all[1] != partial {
		t.Errorf("Usages = %+v", all)
	}
}

func TestCUDAVersion(t *testing.T) {
	t.Parallel()
	for in, want := range map[int]string{12040: "12.4", 11080: "11.8", 12000: "12.0", 13010: "13.1", 0: ""} {
		if got := cudaVersion(in); got != want {
			t.Errorf("cudaVersion(%d) = %q, want %q", in, got, want)
		}
	}
}
