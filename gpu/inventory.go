// Package gpu knows what the host has in GPUs and who holds which: the NVML
// inventory reported to the central server, the exclusive allocation of whole
// GPUs to instances, and the health watcher that takes a failing GPU out of
// service. It is imported by cmd/, server/ and runtime/, and imports
// nothing of the agent's own: the health watch reports its own Event to a
// Publisher, which the wiring (runtime/events/gpuevents) passes on to the
// event hub.
//
// NVML is reached only through an injected nvml.Interface (nvml.New() in the
// agent, the go-nvml mocks in tests), so that a host without the NVIDIA driver
// simply has zero GPUs.
package gpu

import (
	"fmt"
	"log/slog"
	"strconv"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/containerd/errdefs"
)

// MIGMode says whether a GPU is partitioned into MIG instances.
type MIGMode string

// MIG modes as reported in GPU.MIGMode.
const (
	MIGEnabled     MIGMode = "enabled"
	MIGDisabled    MIGMode = "disabled"
	MIGUnsupported MIGMode = "unsupported"
)

// GPU describes one GPU as served by GET /gpus. Fields NVML does not support
// on this GPU are zero or empty.
type GPU struct {
	Index             int     `json:"index"`
	UUID              string  `json:"uuid"`
	Name              string  `json:"name"`
	MemoryTotalMiB    uint64  `json:"memory_total_mib"`
	MemoryTotalBytes  uint64  `json:"memory_total_bytes"`
	PCIBusID          string  `json:"pci_bus_id"`
	MinorNumber       int     `json:"minor_number"`
	ComputeCapability string  `json:"compute_capability"`
	PCIeGenCurrent    int     `json:"pcie_gen_current"`
	PCIeGenMax        int     `json:"pcie_gen_max"`
	PCIeWidthCurrent  int     `json:"pcie_width_current"`
	PCIeWidthMax      int     `json:"pcie_width_max"`
	PowerLimitWatts   int     `json:"power_limit_watts"`
	MIGMode           MIGMode `json:"mig_mode"`
	// NUMANode is the NUMA node the GPU is attached to, -1 where NVML
	// cannot tell.
	NUMANode int  `json:"numa_node"`
	Healthy  bool `json:"healthy"`
	// UnhealthyReason is why the GPU was taken out of service, e.g. "xid 79"
	// or "gpu lost"; empty while Healthy.
	UnhealthyReason string `json:"unhealthy_reason"`
	// HeldBy is the instance holding the GPU, empty when free.
	HeldBy string `json:"held_by"`
}

// Device identifies a GPU handed to an instance: what the runtime needs to
// inject it and record it in the container's labels.
type Device struct {
	Index       int    `json:"index"`
	UUID        string `json:"uuid"`
	MinorNumber int    `json:"minor_number"`
	PCIBusID    string `json:"pci_bus_id"`
	// MIGProfile is set when the device is a MIG device: UUID is the MIG
	// device's, Index, MinorNumber and PCIBusID its parent GPU's.
	MIGProfile string `json:"mig_profile,omitempty"`
}

// Inventory is the host's GPUs as found by Open. The set of GPUs is fixed for
// the life of the agent (NVML enumerates them once); only their health
// changes. Its methods are safe for concurrent use.
type Inventory struct {
	lib    nvml.Interface // nil on a host without NVML
	logger *slog.Logger

	driverVersion     string
	cudaDriverVersion string
	mock              string      // set once by MarkMock, before use
	gpus              []*gpuState // ordered by index; immutable after Open
	byUUID            map[string]*gpuState
	// links[i][j] is how gpus[i] and gpus[j] are connected, and ranks the
	// distinct link ranks present, best first; immutable after Open.
	links [][]pairLink
	ranks []int
	// migs are the rentable MIG devices and byMIG finds them by UUID, set
	// by EnableMIGRentals before use; immutable after.
	migs       []*gpuState
	byMIG      map[string]*gpuState
	migRentals bool

	mu       sync.Mutex
	pub      Publisher    // set by WatchHealth
	holders  holderLookup // set by NewAllocator
	watching bool
	closed   bool
	// healthPath and benched are set by RememberHealth.
	healthPath string
	benched    map[string]benchedGPU
	// faults are the GPU faults of each instance holding GPUs, by
	// instance ID (see reportFault).
	faults map[string][]Fault
}

// gpuState is one GPU's static description, its NVML handle, and its health.
type gpuState struct {
	info GPU // Healthy, UnhealthyReason and HeldBy are filled in on copy
	dev  nvml.Device
	pos  int // index into Inventory.gpus and links; -1 for a MIG device
	// mig is set on a MIG device: a unit of its own, allocated like a
	// GPU, whose health is its parent's.
	mig *migInfo

	// unhealthy is guarded by Inventory.mu. Once set it stays set: the
	// errors that set it need a GPU reset or service. With RememberHealth
	// it outlives the agent too.
	unhealthy string
}

func (g *gpuState) device() Device {
	d := Device{Index: g.info.Index, UUID: g.info.UUID, MinorNumber: g.info.MinorNumber, PCIBusID: g.info.PCIBusID}
	if g.mig != nil {
		d.MIGProfile = g.mig.desc.Profile
	}
	return d
}

// holderLookup is the one thing the inventory asks of the allocator: who
// holds a GPU, for GET /gpus and for naming the instance in a health event.
type holderLookup interface {
	holderOf(uuid string) string
	BestFree() []BestFree
}

// Open enumerates the GPUs through lib, which must not be initialised yet;
// the Inventory owns it from then on (see Close). A host without the NVML
// library (nvml.Init reports ERROR_LIBRARY_NOT_FOUND, or loading it panics)
// is a host with zero GPUs: Open logs that once and succeeds. Any other Init
// failure, such as a driver that is installed but not loaded, is returned as
// an Unavailable error so that the operator notices rather than renting the
// host out as CPU-only by mistake.
//
// A GPU whose handle or UUID cannot be read is left out (and logged): it
// could not be addressed or allocated anyway, and the rest of the host can
// still be rented. Descriptive fields that fail are left zero.
func Open(lib nvml.Interface, logger *slog.Logger) (inv *Inventory, err error) {
	if logger == nil {
		logger = slog.Default()
	}
	inv = &Inventory{logger: logger, byUUID: map[string]*gpuState{}}
	if lib == nil {
		logger.Info("no NVML library given; running as a host without GPUs")
		return inv, nil
	}

	ret, panicked := initLibrary(lib)
	switch {
	case panicked != nil:
		logger.Warn("loading the NVML library failed; running as a host without GPUs", "panic", fmt.Sprint(panicked))
		return inv, nil
	case ret == nvml.ERROR_LIBRARY_NOT_FOUND:
		logger.Info("NVML library not found; running as a host without GPUs")
		return inv, nil
	case ret != nvml.SUCCESS:
		return nil, nvmlError("initialize NVML", ret)
	}

	// From here the library is initialised; give it back on failure so that
	// NVML's reference count stays balanced.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: enumerate GPUs: NVML call panicked: %v", errdefs.ErrInternal, r)
		}
		if err != nil {
			lib.Shutdown()
			inv = nil
		}
	}()
	inv.lib = lib

	p := &probe{logger: logger, level: slog.LevelWarn}
	if v, ok := query(p, "driver version", lib.SystemGetDriverVersion); ok {
		inv.driverVersion = v
	}
	if v, ok := query(p, "CUDA driver version", lib.SystemGetCudaDriverVersion); ok {
		inv.cudaDriverVersion = cudaVersion(v)
	}

	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, nvmlError("count GPUs", ret)
	}
	for i := range n {
		g, err := inv.readGPU(i)
		if err != nil {
			logger.Warn("leaving GPU out of the inventory", "index", i, "error", err)
			continue
		}
		inv.gpus = append(inv.gpus, g)
		inv.byUUID[g.info.UUID] = g
	}
	inv.readTopology()
	logger.Info("GPU inventory", "gpus", len(inv.gpus), "driver", inv.driverVersion, "cuda", inv.cudaDriverVersion)
	return inv, nil
}

// initLibrary calls Init, turning a panic from loading the shared library
// into a reported value rather than a crashed agent.
func initLibrary(lib nvml.Interface) (ret nvml.Return, panicked any) {
	defer func() {
		if r := recover(); r != nil {
			panicked = r
		}
	}()
	return lib.Init(), nil
}

// readGPU describes the GPU at NVML index i.
func (inv *Inventory) readGPU(i int) (*gpuState, error) {
	dev, ret := inv.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return nil, nvmlError("get handle", ret)
	}
	uuid, ret := dev.GetUUID()
	if ret != nvml.SUCCESS {
		return nil, nvmlError("get UUID", ret)
	}
	if uuid == "" {
		return nil, fmt.Errorf("%w: NVML reported an empty UUID", errdefs.ErrUnavailable)
	}
	g := &gpuState{dev: dev, info: GPU{Index: i, UUID: uuid, MIGMode: MIGUnsupported}}
	p := &probe{logger: inv.logger.With("gpu", uuid), level: slog.LevelWarn}

	if v, ok := query(p, "name", dev.GetName); ok {
		g.info.Name = v
	}
	if v, ok := query(p, "memory", dev.GetMemoryInfo); ok {
		g.info.MemoryTotalBytes = v.Total
		g.info.MemoryTotalMiB = v.Total / (1 << 20)
	}
	if v, ok := query(p, "PCI info", dev.GetPciInfo); ok {
		g.info.PCIBusID = cString(v.BusId[:])
	}
	if v, ok := query(p, "minor number", dev.GetMinorNumber); ok {
		g.info.MinorNumber = v
	}
	if v, ok := query(p, "compute capability", func() ([2]int, nvml.Return) {
		major, minor, ret := dev.GetCudaComputeCapability()
		return [2]int{major, minor}, ret
	}); ok {
		g.info.ComputeCapability = fmt.Sprintf("%d.%d", v[0], v[1])
	}
	if v, ok := query(p, "PCIe generation", dev.GetCurrPcieLinkGeneration); ok {
		g.info.PCIeGenCurrent = v
	}
	if v, ok := query(p, "max PCIe generation", dev.GetMaxPcieLinkGeneration); ok {
		g.info.PCIeGenMax = v
	}
	if v, ok := query(p, "PCIe width", dev.GetCurrPcieLinkWidth); ok {
		g.info.PCIeWidthCurrent = v
	}
	if v, ok := query(p, "max PCIe width", dev.GetMaxPcieLinkWidth); ok {
		g.info.PCIeWidthMax = v
	}
	if v, ok := query(p, "power limit", dev.GetPowerManagementLimit); ok {
		g.info.PowerLimitWatts = int(v / 1000) // NVML reports milliwatts
	}
	if v, ok := query(p, "MIG mode", func() (int, nvml.Return) {
		current, _, ret := dev.GetMigMode()
		return current, ret
	}); ok {
		g.info.MIGMode = MIGDisabled
		if v == nvml.DEVICE_MIG_ENABLE {
			g.info.MIGMode = MIGEnabled
		}
	}
	if p.lost {
		g.unhealthy = ReasonGPULost
		p.logger.Warn("GPU is lost; it will not be allocated")
	} else if reason := memoryFault(p, dev); reason != "" {
		g.unhealthy = reason
		p.logger.Warn("GPU memory needs service; it will not be allocated", "reason", reason)
	}
	return g, nil
}

// Reasons a GPU is kept out of service at start, from NVML's memory state.
const (
	ReasonRetirementPending = "page retirement pending (GPU reset needed)"
	ReasonRemapFailure      = "row remapping failed (GPU needs service)"
	ReasonRemapPending      = "row remapping pending (GPU reset needed)"
	ReasonUncorrectedECC    = "uncorrected ECC errors since the driver loaded"
)

// memoryFault reads the memory health NVML keeps across agent restarts and
// says why the GPU must not be rented, or "": retired pages waiting for a
// reset (older GPUs), rows waiting to be remapped or a failed remap
// (Ampere and later), and uncorrected ECC errors counted since the driver
// loaded (volatile: a reset clears them, as it clears the fault). Each is
// what NVIDIA's guidance says needs a reset or service before new work;
// queries a GPU does not support are skipped.
func memoryFault(p *probe, dev nvml.Device) string {
	if v, ok := query(p, "retired pages pending", dev.GetRetiredPagesPendingStatus); ok && v == nvml.FEATURE_ENABLED {
		return ReasonRetirementPending
	}
	type remap struct{ pending, failed bool }
	if v, ok := query(p, "remapped rows", func() (remap, nvml.Return) {
		_, _, pending, failed, ret := dev.GetRemappedRows()
		return remap{pending, failed}, ret
	}); ok {
		switch {
		case v.failed:
			return ReasonRemapFailure
		case v.pending:
			return ReasonRemapPending
		}
	}
	if v, ok := query(p, "uncorrected ECC errors", func() (uint64, nvml.Return) {
		return dev.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
	}); ok && v > 0 {
		return ReasonUncorrectedECC
	}
	return ""
}

// MarkMock records that the inventory is a mock GPU machine's (GPU_MOCK),
// named name, so that every report of it says so. Call it right after Open.
func (inv *Inventory) MarkMock(name string) { inv.mock = name }

// Mock is the mock GPU machine the inventory reads, or "" for real GPUs.
func (inv *Inventory) Mock() string { return inv.mock }

// Available reports whether NVML was loaded; false on a host without the
// NVIDIA driver, where the inventory is empty.
func (inv *Inventory) Available() bool { return inv.lib != nil }

// DriverVersion is the NVIDIA driver version, e.g. "550.54.15"; empty
// without NVML.
func (inv *Inventory) DriverVersion() string { return inv.driverVersion }

// CUDADriverVersion is the highest CUDA version the driver supports, e.g.
// "12.4"; empty without NVML.
func (inv *Inventory) CUDADriverVersion() string { return inv.cudaDriverVersion }

// Len is the number of GPUs in the inventory, healthy or not.
func (inv *Inventory) Len() int { return len(inv.gpus) }

// GPUs describes every GPU, ordered by index, with its current health and
// holder.
func (inv *Inventory) GPUs() []GPU {
	out := make([]GPU, len(inv.gpus))
	inv.mu.Lock()
	holders := inv.holders
	for i, g := range inv.gpus {
		out[i] = g.info
		out[i].UnhealthyReason = g.unhealthy
		out[i].Healthy = g.unhealthy == ""
	}
	inv.mu.Unlock()
	// Asked outside inv.mu: the allocator takes its own lock and then
	// inv.mu, so holding inv.mu here could deadlock.
	if holders != nil {
		for i := range out {
			out[i].HeldBy = holders.holderOf(out[i].UUID)
		}
	}
	return out
}

// Close shuts NVML down. The inventory must not be used afterwards.
func (inv *Inventory) Close() error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.lib == nil || inv.closed {
		return nil
	}
	inv.closed = true
	if ret := inv.lib.Shutdown(); ret != nvml.SUCCESS {
		return nvmlError("shut NVML down", ret)
	}
	return nil
}

// lookup finds a GPU by UUID or by decimal NVML index, or a rentable MIG
// device by UUID.
func (inv *Inventory) lookup(id string) (*gpuState, bool) {
	if g, ok := inv.byUUID[id]; ok {
		return g, true
	}
	if m, ok := inv.byMIG[id]; ok {
		return m, true
	}
	if !isDecimal(id) {
		return nil, false
	}
	i, err := strconv.Atoi(id)
	if err != nil {
		return nil, false
	}
	// Indexes can have gaps where a GPU was left out, so search.
	for _, g := range inv.gpus {
		if g.info.Index == i {
			return g, true
		}
	}
	return nil, false
}

// unhealthyReason is why g is out of service, or "" while it is healthy. A
// MIG device is out of service when its parent is.
func (inv *Inventory) unhealthyReason(g *gpuState) string {
	if g.mig != nil {
		g = g.mig.parent
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return g.unhealthy
}

func (inv *Inventory) attach(h holderLookup) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.holders = h
}

func isDecimal(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
