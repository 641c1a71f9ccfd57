// Package gpumock builds mock GPU machines on go-nvml's mock NVML, complete
// with what the agent reads beyond go-nvml's own mocks: stable UUIDs and PCI
// bus IDs, the PCIe and NVLink topology and each GPU's NUMA node. The agent
// runs on one of them with GPU_MOCK (a GPU host to integrate a scheduler
// against, without GPUs), and tests use them as stand-ins for real machines.
//
// It imports only go-nvml; gpu/ and cmd/ may import it.
package gpumock

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// Machine names accepted by New.
const (
	// DGXA100 is 8 A100-SXM4-40GB on NVSwitch, two sockets: GPUs 0-3 on
	// NUMA node 0, 4-7 on node 1, each pair (0-1, 2-3, ...) under one PCIe
	// switch.
	DGXA100 = "dgxa100"
	// DGXH100 is 8 H100-SXM5-80GB laid out as DGXA100.
	DGXH100 = "dgxh100"
	// PCIe8x4090 is 8 RTX 4090 without NVLink: pairs (0-1, 2-3, 4-5, 6-7)
	// under four PCIe switches, two switches per socket (GPUs 0-3 on NUMA
	// node 0, 4-7 on node 1).
	PCIe8x4090 = "pcie8x4090"
)

// RTX4090 describes a GeForce RTX 4090, which go-nvml has no config for.
var RTX4090 = gpus.Config{
	Name:         "NVIDIA GeForce RTX 4090",
	Architecture: nvml.DEVICE_ARCH_ADA,
	Brand:        nvml.BRAND_GEFORCE_RTX,
	MemoryMB:     24564,
	CudaMajor:    8,
	CudaMinor:    9,
	PciDeviceId:  0x268410DE,
}

// machine is how one mock machine is laid out.
type machine struct {
	config gpus.Config
	// busIDs are the GPUs' PCI addresses, by index, as on the real machine.
	busIDs []string
	nvlink bool // every pair through NVSwitch
	// switchOf and numaOf give each GPU's PCIe switch and NUMA node.
	switchOf, numaOf []int
}

var machines = map[string]machine{
	DGXA100: {
		config: gpus.A100_SXM4_40GB,
		busIDs: []string{"07", "0f", "47", "4e", "87", "90", "b7", "bd"},
		nvlink: true,
	},
	DGXH100: {
		config: gpus.H100_SXM5_80GB,
		busIDs: []string{"18", "2a", "3a", "5d", "9a", "ab", "ba", "db"},
		nvlink: true,
	},
	PCIe8x4090: {
		config: RTX4090,
		busIDs: []string{"01", "02", "21", "22", "81", "82", "a1", "a2"},
	},
}

func init() {
	for name, m := range machines {
		m.switchOf = []int{0, 0, 1, 1, 2, 2, 3, 3}
		m.numaOf = []int{0, 0, 0, 0, 1, 1, 1, 1}
		machines[name] = m
	}
}

// Names lists the machines New knows, sorted.
func Names() []string {
	out := make([]string, 0, len(machines))
	for n := range machines {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Machine is a mock GPU machine: go-nvml's mock NVML, completed, with an
// event source for health events.
type Machine struct {
	*server.Server
	// Name is the name New was given.
	Name   string
	events *Events
	migs   []*MIGDevice
}

// New builds the named mock machine; its NVML is not initialised yet. The
// GPUs' UUIDs derive from the machine's name and the GPU's index, so that a
// restarted agent finds the GPUs its rentals' labels name.
func New(name string) (*Machine, error) {
	m, ok := machines[name]
	if !ok {
		return nil, fmt.Errorf("unknown mock GPU machine %q (known: %v)", name, Names())
	}
	s, err := server.New(
		server.WithGPUs(gpus.Multiple(len(m.busIDs), m.config)...),
		server.WithDriverVersion("550.54.15"),
		server.WithNVMLVersion("12.550.54.15"),
		server.WithCUDADriverVersion(12040),
	)
	if err != nil {
		return nil, err
	}
	devs := make([]*server.Device, len(s.Devices))
	for i, d := range s.Devices {
		devs[i] = d.(*server.Device)
		devs[i].UUID = stableUUID(name, i)
		devs[i].PciBusID = fmt.Sprintf("00000000:%s:00.0", m.busIDs[i])
	}
	for i, d := range devs {
		complete(m, devs, i, d)
	}
	mm := &Machine{Server: s, Name: name, events: WithEvents(s)}
	mm.completeMIG(devs)
	return mm, nil
}

// InjectXid makes the GPU at index report Xid xid, as the driver does
// through NVML's events; a health watcher waiting on the machine gets it.
func (m *Machine) InjectXid(index int, xid uint64) {
	m.events.ch <- nvml.EventData{Device: m.Devices[index], EventType: nvml.EventTypeXidCriticalError, EventData: xid,
		GpuInstanceId: noInstance, ComputeInstanceId: noInstance}
}

// InjectMIGXid makes the GPU at index report Xid xid in its GPU instance
// gi, as NVML reports an Xid inside one MIG device.
func (m *Machine) InjectMIGXid(index, gi int, xid uint64) {
	m.events.ch <- nvml.EventData{Device: m.Devices[index], EventType: nvml.EventTypeXidCriticalError, EventData: xid,
		GpuInstanceId: uint32(gi), ComputeInstanceId: noInstance}
}

// noInstance is NVML's instance ID of an event about the whole GPU.
const noInstance = 0xFFFFFFFF

// InjectDoubleBitECC makes the GPU at index report a double-bit ECC error.
func (m *Machine) InjectDoubleBitECC(index int) {
	m.events.ch <- nvml.EventData{Device: m.Devices[index], EventType: nvml.EventTypeDoubleBitEccError,
		GpuInstanceId: noInstance, ComputeInstanceId: noInstance}
}

// Events is the source of a mock's NVML events: what is injected through
// it, a health watcher waiting on the mock's event set gets.
type Events struct {
	ch   chan nvml.EventData
	devs []nvml.Device
}

// WithEvents gives s NVML's event sets, as every Machine has them: every
// GPU supports the Xid and ECC events, and a wait returns an injected
// event or times out as NVML's does. s is any go-nvml mock server, such as
// go-nvml's dgxa100.NewWithGPUs, which has none (a health watcher on it
// stops at once). Events are injected through what it returns.
func WithEvents(s *server.Server) *Events {
	e := &Events{ch: make(chan nvml.EventData, 64), devs: slices.Clone(s.Devices)}
	s.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return &mock.EventSet{}, nvml.SUCCESS }
	s.EventSetFreeFunc = func(nvml.EventSet) nvml.Return { return nvml.SUCCESS }
	s.EventSetWaitFunc = func(_ nvml.EventSet, timeoutMs uint32) (nvml.EventData, nvml.Return) {
		select {
		case ev := <-e.ch:
			return ev, nvml.SUCCESS
		case <-time.After(time.Duration(timeoutMs) * time.Millisecond):
			return nvml.EventData{}, nvml.ERROR_TIMEOUT
		}
	}
	for _, d := range s.Devices {
		d, ok := d.(*server.Device)
		if !ok {
			continue
		}
		d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
			return uint64(nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError), nvml.SUCCESS
		}
		d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
	}
	return e
}

// Inject makes the GPU at index report Xid xid, or a double-bit ECC error
// when ecc is set, waiting for room in the event queue until ctx ends.
func (e *Events) Inject(ctx context.Context, index int, xid uint64, ecc bool) error {
	if index < 0 || index >= len(e.devs) {
		return fmt.Errorf("no GPU %d: the mock has %d", index, len(e.devs))
	}
	ev := nvml.EventData{Device: e.devs[index], EventType: nvml.EventTypeXidCriticalError, EventData: xid,
		GpuInstanceId: noInstance, ComputeInstanceId: noInstance}
	if ecc {
		ev.EventType, ev.EventData = nvml.EventTypeDoubleBitEccError, 0
	}
	select {
	case e.ch <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stableUUID makes a GPU UUID of NVML's form from name and index.
func stableUUID(name string, index int) string {
	h := sha256.Sum256(fmt.Appendf(nil, "gpumock/%s/%d", name, index))
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// complete fills in what go-nvml's mock device lacks.
func complete(m machine, devs []*server.Device, i int, d *server.Device) {
	// Peers are matched by UUID: callers may wrap the devices they got
	// (go-nvlib does), so the handle itself is not comparable.
	indexOf := func(other nvml.Device) int {
		if other == nil {
			return -1
		}
		uuid, ret := other.GetUUID()
		if ret != nvml.SUCCESS {
			return -1
		}
		return slices.IndexFunc(devs, func(x *server.Device) bool { return x.UUID == uuid })
	}
	d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		p := nvml.PciInfo{PciDeviceId: d.Config.PciDeviceId}
		for k := range len(d.PciBusID) {
			p.BusId[k] = int8(d.PciBusID[k])
		}
		return p, nvml.SUCCESS
	}
	d.GetNumaNodeIdFunc = func() (int, nvml.Return) { return m.numaOf[i], nvml.SUCCESS }
	d.GetTopologyCommonAncestorFunc = func(other nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
		j := indexOf(other)
		switch {
		case j < 0:
			return 0, nvml.ERROR_INVALID_ARGUMENT
		case m.switchOf[i] == m.switchOf[j]:
			return nvml.TOPOLOGY_SINGLE, nvml.SUCCESS
		case m.numaOf[i] == m.numaOf[j]:
			return nvml.TOPOLOGY_NODE, nvml.SUCCESS
		default:
			return nvml.TOPOLOGY_SYSTEM, nvml.SUCCESS
		}
	}
	d.GetP2PStatusFunc = func(other nvml.Device, caps nvml.GpuP2PCapsIndex) (nvml.GpuP2PStatus, nvml.Return) {
		if indexOf(other) < 0 {
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		if caps == nvml.P2P_CAPS_INDEX_NVLINK && !m.nvlink {
			return nvml.P2P_STATUS_NOT_SUPPORTED, nvml.SUCCESS
		}
		return nvml.P2P_STATUS_OK, nvml.SUCCESS
	}
	// NVLinks end at the NVSwitches, as on the real machines, so a link's
	// remote end is a switch, never another GPU.
	d.GetNvLinkStateFunc = func(link int) (nvml.EnableState, nvml.Return) {
		if !m.nvlink || link >= 12 {
			return 0, nvml.ERROR_NOT_SUPPORTED
		}
		return nvml.FEATURE_ENABLED, nvml.SUCCESS
	}
	d.GetNvLinkRemotePciInfoFunc = func(link int) (nvml.PciInfo, nvml.Return) {
		if !m.nvlink || link >= 12 {
			return nvml.PciInfo{}, nvml.ERROR_NOT_SUPPORTED
		}
		var p nvml.PciInfo
		for k, c := range fmt.Sprintf("00000000:%02x:00.0", 0xc0+link%6) {
			p.BusId[k] = int8(c)
		}
		return p, nvml.SUCCESS
	}
	d.GetCurrPcieLinkGenerationFunc = func() (int, nvml.Return) { return 4, nvml.SUCCESS }
	d.GetMaxPcieLinkGenerationFunc = func() (int, nvml.Return) { return 4, nvml.SUCCESS }
	d.GetCurrPcieLinkWidthFunc = func() (int, nvml.Return) { return 16, nvml.SUCCESS }
	d.GetMaxPcieLinkWidthFunc = func() (int, nvml.Return) { return 16, nvml.SUCCESS }
}

// Inject makes the GPU at index report Xid xid, or a double-bit ECC error
// when ecc is set, waiting for room in the event queue until ctx ends.
func (m *Machine) Inject(ctx context.Context, index int, xid uint64, ecc bool) error {
	return m.events.Inject(ctx, index, xid, ecc)
}
