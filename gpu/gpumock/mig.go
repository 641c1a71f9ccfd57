package gpumock

import (
	"crypto/sha256"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// DGXH100MIG is DGXH100 with MIG enabled on GPUs 0 and 1, partitioned
// already (the agent never repartitions): GPU 0 into 3g.40gb, 2g.20gb and
// two 1g.10gb devices, GPU 1 into seven 1g.10gb devices. GPUs 2-7 are
// whole GPUs as on DGXH100.
const DGXH100MIG = "dgxh100-mig"

// MIGProfile is one MIG profile of a mock machine: its name as nvidia-smi
// shows it, its GPU slices and its memory.
type MIGProfile struct {
	Name     string
	Slices   uint32
	MemoryMB uint64
}

// H100 80GB MIG profiles, with the memory NVML reports for them.
var (
	H100MIG1g10gb = MIGProfile{Name: "1g.10gb", Slices: 1, MemoryMB: 9856}
	H100MIG2g20gb = MIGProfile{Name: "2g.20gb", Slices: 2, MemoryMB: 19968}
	H100MIG3g40gb = MIGProfile{Name: "3g.40gb", Slices: 3, MemoryMB: 40192}
)

// migLayouts gives, per machine, the MIG devices each MIG-enabled GPU
// holds, by GPU index.
var migLayouts = map[string]map[int][]MIGProfile{
	DGXH100MIG: {
		0: {H100MIG3g40gb, H100MIG2g20gb, H100MIG1g10gb, H100MIG1g10gb},
		1: {H100MIG1g10gb, H100MIG1g10gb, H100MIG1g10gb, H100MIG1g10gb, H100MIG1g10gb, H100MIG1g10gb, H100MIG1g10gb},
	},
}

func init() {
	m := machines[DGXH100]
	m.switchOf = []int{0, 0, 1, 1, 2, 2, 3, 3}
	m.numaOf = []int{0, 0, 0, 0, 1, 1, 1, 1}
	machines[DGXH100MIG] = m
}

// maxMIGDevices is what NVML reports as a GPU's maximum MIG device count
// on A100 and H100.
const maxMIGDevices = 7

// MIGDevice is a mock MIG device: a device handle of its own, as NVML hands
// out through GetMigDeviceHandleByIndex, with its place on its parent.
type MIGDevice struct {
	*mock.Device
	UUID    string
	Profile MIGProfile
	// Parent is the GPU's NVML index, Index the MIG device's index on it.
	Parent, Index int
	// GPUInstance and ComputeInstance are the IDs NVML gives the MIG
	// device's GPU instance and compute instance.
	GPUInstance, ComputeInstance int
}

// MIGDevices lists the machine's MIG devices, by parent and index.
func (m *Machine) MIGDevices() []*MIGDevice { return m.migs }

// CapMinors are the minors of the nvidia-caps access nodes of the MIG
// device's GPU instance and compute instance
// (/dev/nvidia-caps/nvidia-capN), laid out as the driver's
// /proc/driver/nvidia-caps/mig-minors numbers them: config 1, monitor 2,
// then per GPU minor 15 GPU instances of one access node and 8 compute
// instances each.
func CapMinors(parentMinor, gpuInstance, computeInstance int) (gi, ci int) {
	gi = 3 + parentMinor*15*9 + gpuInstance*9
	return gi, gi + 1 + computeInstance
}

// completeMIG puts the machine's MIG devices on its GPUs: MIG mode on, the
// MIG device handles, and on each MIG device what the agent and nvcdi read.
func (m *Machine) completeMIG(devs []*server.Device) {
	layout := migLayouts[m.Name]
	for i, d := range devs {
		profiles, ok := layout[i]
		if !ok {
			continue
		}
		d.MigMode = nvml.DEVICE_MIG_ENABLE
		var migs []*MIGDevice
		for j, p := range profiles {
			// GPU instance IDs as NVML numbers them for this layout:
			// one per MIG device, from 1; one compute instance each.
			mig := newMIGDevice(m.Name, d, i, j, j+1, 0, p)
			migs = append(migs, mig)
			m.migs = append(m.migs, mig)
		}
		d.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return maxMIGDevices, nvml.SUCCESS }
		d.GetMigDeviceHandleByIndexFunc = func(k int) (nvml.Device, nvml.Return) {
			if k < 0 || k >= maxMIGDevices {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			if k >= len(migs) {
				return nil, nvml.ERROR_NOT_FOUND
			}
			return migs[k], nvml.SUCCESS
		}
		d.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return false, nvml.SUCCESS }
	}
	for _, d := range devs {
		if d.IsMigDeviceHandleFunc == nil {
			d.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return false, nvml.SUCCESS }
		}
	}
}

func newMIGDevice(machine string, parent *server.Device, parentIndex, index, gi, ci int, p MIGProfile) *MIGDevice {
	h := sha256.Sum256(fmt.Appendf(nil, "gpumock/%s/%d/mig/%d", machine, parentIndex, index))
	mig := &MIGDevice{
		Device:          &mock.Device{},
		UUID:            fmt.Sprintf("MIG-%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16]),
		Profile:         p,
		Parent:          parentIndex,
		Index:           index,
		GPUInstance:     gi,
		ComputeInstance: ci,
	}
	d := mig.Device
	d.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return true, nvml.SUCCESS }
	d.GetUUIDFunc = func() (string, nvml.Return) { return mig.UUID, nvml.SUCCESS }
	d.GetNameFunc = func() (string, nvml.Return) {
		return fmt.Sprintf("%s MIG %s", parent.Config.Name, p.Name), nvml.SUCCESS
	}
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		total := p.MemoryMB << 20
		return nvml.Memory{Total: total, Free: total}, nvml.SUCCESS
	}
	d.GetAttributesFunc = func() (nvml.DeviceAttributes, nvml.Return) {
		return nvml.DeviceAttributes{GpuInstanceSliceCount: p.Slices, ComputeInstanceSliceCount: p.Slices, MemorySizeMB: p.MemoryMB}, nvml.SUCCESS
	}
	d.GetGpuInstanceIdFunc = func() (int, nvml.Return) { return gi, nvml.SUCCESS }
	d.GetComputeInstanceIdFunc = func() (int, nvml.Return) { return ci, nvml.SUCCESS }
	d.GetDeviceHandleFromMigDeviceHandleFunc = func() (nvml.Device, nvml.Return) { return parent, nvml.SUCCESS }
	d.GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED }
	d.GetMinorNumberFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED }
	return mig
}
