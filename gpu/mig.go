package gpu

import (
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/containerd/errdefs"
)

// MIGDevice describes one MIG device as served by GET /gpus: a slice of a
// GPU in MIG mode, rented as a unit of its own with MIG_RENTALS. The agent
// rents the MIG devices the operator made; it never repartitions a GPU.
type MIGDevice struct {
	UUID string `json:"uuid"`
	// Profile is the MIG profile, as nvidia-smi names it: "1g.10gb".
	Profile          string `json:"profile"`
	MemoryTotalMiB   uint64 `json:"memory_total_mib"`
	MemoryTotalBytes uint64 `json:"memory_total_bytes"`
	// ParentIndex and ParentUUID name the GPU the MIG device is part of;
	// Index is the MIG device's index on it.
	ParentIndex int    `json:"parent_index"`
	ParentUUID  string `json:"parent_uuid"`
	Index       int    `json:"index"`
	// GPUInstanceID and ComputeInstanceID are NVML's IDs of the MIG
	// device's GPU instance and compute instance.
	GPUInstanceID     int `json:"gpu_instance_id"`
	ComputeInstanceID int `json:"compute_instance_id"`
	NUMANode          int `json:"numa_node"`
	// Healthy and UnhealthyReason follow the parent GPU: a fault that
	// takes the GPU out of service takes all its MIG devices with it.
	Healthy         bool   `json:"healthy"`
	UnhealthyReason string `json:"unhealthy_reason"`
	HeldBy          string `json:"held_by"`
}

// migInfo is what a MIG device's gpuState adds.
type migInfo struct {
	parent *gpuState
	desc   MIGDevice // Healthy, UnhealthyReason and HeldBy filled on copy
}

// migProfilePattern is the form of a MIG profile name: GPU slices, memory,
// and an optional media-engine suffix ("1g.10gb", "1g.20gb+me",
// "4g.40gb-me").
var migProfilePattern = regexp.MustCompile(`^[1-8]g\.[1-9][0-9]{0,3}gb([+-](me|gfx)(\.all)?)?$`)

// ValidMIGProfile reports whether s has the form of a MIG profile name.
func ValidMIGProfile(s string) bool { return migProfilePattern.MatchString(s) }

// IsMIGUUID reports whether s has the form NVML gives a MIG device's UUID
// (MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).
func IsMIGUUID(s string) bool { return hasUUIDForm(s, "MIG-") }

// IsGPUUUID reports whether s has the form NVML gives a whole GPU's UUID
// (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).
func IsGPUUUID(s string) bool { return hasUUIDForm(s, "GPU-") }

// hasUUIDForm reports whether s is prefix followed by a UUID in its
// 8-4-4-4-12 hexadecimal form.
func hasUUIDForm(s, prefix string) bool {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok || len(rest) != 36 {
		return false
	}
	for i, c := range rest {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return false
			}
		}
	}
	return true
}

// EnableMIGRentals makes the MIG devices of the GPUs in MIG mode rentable
// units (MIG_RENTALS): it enumerates them through NVML and lists them in
// MIGDevices, and the allocator hands them out by profile or UUID. Call it
// right after Open, before NewAllocator. A MIG device NVML cannot describe
// is left out and logged. It returns how many MIG devices it found.
func (inv *Inventory) EnableMIGRentals() int {
	inv.migRentals = true
	if inv.lib == nil {
		return 0
	}
	if inv.byMIG == nil {
		inv.byMIG = map[string]*gpuState{}
	}
	for _, g := range inv.gpus {
		if g.info.MIGMode != MIGEnabled {
			continue
		}
		p := &probe{logger: inv.logger.With("gpu", g.info.UUID), level: slog.LevelWarn}
		n, ok := query(p, "max MIG devices", g.dev.GetMaxMigDeviceCount)
		if !ok {
			continue
		}
		for k := range n {
			dev, ret := g.dev.GetMigDeviceHandleByIndex(k)
			if ret == nvml.ERROR_NOT_FOUND {
				continue
			}
			if ret != nvml.SUCCESS {
				p.logger.Warn("cannot read a MIG device; leaving it out", "mig_index", k, "error", ret.Error())
				continue
			}
			m, err := inv.readMIG(g, k, dev)
			if err != nil {
				p.logger.Warn("leaving MIG device out of the inventory", "mig_index", k, "error", err)
				continue
			}
			inv.migs = append(inv.migs, m)
			inv.byMIG[m.info.UUID] = m
		}
	}
	inv.logger.Info("MIG devices are rentable units", "mig_devices", len(inv.migs))
	return len(inv.migs)
}

// MIGRentals reports whether EnableMIGRentals was called.
func (inv *Inventory) MIGRentals() bool { return inv.migRentals }

func (inv *Inventory) readMIG(parent *gpuState, k int, dev nvml.Device) (*gpuState, error) {
	uuid, ret := dev.GetUUID()
	if ret != nvml.SUCCESS {
		return nil, nvmlError("get MIG UUID", ret)
	}
	if !IsMIGUUID(uuid) {
		return nil, fmt.Errorf("%w: NVML gave MIG device UUID %q, not of the form MIG-xxxxxxxx-…", errdefs.ErrUnavailable, uuid)
	}
	d := MIGDevice{UUID: uuid, ParentIndex: parent.info.Index, ParentUUID: parent.info.UUID, Index: k, NUMANode: parent.info.NUMANode}
	p := &probe{logger: inv.logger.With("mig", uuid), level: slog.LevelWarn}
	if v, ok := query(p, "memory", dev.GetMemoryInfo); ok {
		d.MemoryTotalBytes, d.MemoryTotalMiB = v.Total, v.Total/(1<<20)
	}
	if v, ok := query(p, "GPU instance", dev.GetGpuInstanceId); ok {
		d.GPUInstanceID = v
	}
	if v, ok := query(p, "compute instance", dev.GetComputeInstanceId); ok {
		d.ComputeInstanceID = v
	}
	if name, ok := query(p, "name", dev.GetName); ok {
		d.Profile = profileFromName(name)
	}
	if d.Profile == "" {
		if a, ok := query(p, "attributes", dev.GetAttributes); ok && a.GpuInstanceSliceCount > 0 {
			d.Profile = fmt.Sprintf("%dg.%dgb", a.GpuInstanceSliceCount, (a.MemorySizeMB+1023)/1024)
		}
	}
	if d.Profile == "" {
		return nil, fmt.Errorf("%w: cannot tell the MIG device's profile", errdefs.ErrUnavailable)
	}
	g := &gpuState{
		info: GPU{Index: parent.info.Index, UUID: uuid, Name: parent.info.Name, MemoryTotalMiB: d.MemoryTotalMiB,
			MemoryTotalBytes: d.MemoryTotalBytes, PCIBusID: parent.info.PCIBusID, MinorNumber: parent.info.MinorNumber,
			ComputeCapability: parent.info.ComputeCapability, MIGMode: MIGEnabled, NUMANode: parent.info.NUMANode},
		dev: dev, pos: -1,
		mig: &migInfo{parent: parent, desc: d},
	}
	return g, nil
}

// profileFromName reads the profile off NVML's MIG device name, "NVIDIA
// H100 80GB HBM3 MIG 1g.10gb"; "" when the name has none.
func profileFromName(name string) string {
	_, after, ok := strings.Cut(name, " MIG ")
	if !ok {
		return ""
	}
	p := strings.TrimSpace(after)
	if !ValidMIGProfile(p) {
		return ""
	}
	return p
}

// MIGDevices describes every rentable MIG device, by parent and index, with
// its health and holder; empty unless MIG rentals are enabled.
func (inv *Inventory) MIGDevices() []MIGDevice {
	out := make([]MIGDevice, len(inv.migs))
	inv.mu.Lock()
	holders := inv.holders
	for i, m := range inv.migs {
		out[i] = m.mig.desc
		out[i].UnhealthyReason = m.mig.parent.unhealthy
		out[i].Healthy = out[i].UnhealthyReason == ""
	}
	inv.mu.Unlock()
	if holders != nil {
		for i := range out {
			out[i].HeldBy = holders.holderOf(out[i].UUID)
		}
	}
	return out
}

// migChildren lists g's rentable MIG devices.
func (inv *Inventory) migChildren(g *gpuState) []*gpuState {
	var out []*gpuState
	for _, m := range inv.migs {
		if m.mig.parent == g {
			out = append(out, m)
		}
	}
	return out
}

// freeMIGLocked lists the healthy MIG devices of profile nobody holds, and
// the profiles the host has at all. The caller holds a.mu.
func (a *Allocator) freeMIGLocked(profile string) (free []*gpuState, have []string) {
	for _, m := range a.inv.migs {
		if !slices.Contains(have, m.mig.desc.Profile) {
			have = append(have, m.mig.desc.Profile)
		}
		if m.mig.desc.Profile != profile || a.holder[m.info.UUID] != "" || a.inv.unhealthyReason(m) != "" {
			continue
		}
		free = append(free, m)
	}
	return free, have
}

// pickMIG chooses one of the free MIG devices: the one on the GPU with the
// fewest free MIG devices left, so that whole free GPUs' worth of slices
// stay together for larger profiles; then the lowest parent and index.
func (a *Allocator) pickMIG(free []*gpuState) *gpuState {
	freeOn := map[*gpuState]int{}
	for _, m := range a.inv.migs {
		if a.holder[m.info.UUID] == "" {
			freeOn[m.mig.parent]++
		}
	}
	best := free[0]
	for _, m := range free[1:] {
		if freeOn[m.mig.parent] < freeOn[best.mig.parent] {
			best = m
		}
	}
	return best
}

// MIGUsages samples the memory each rentable MIG device uses, by parent and
// index: the one figure NVML gives per MIG device (utilisation, temperature
// and power are the parent GPU's).
func (inv *Inventory) MIGUsages() []Usage {
	out := make([]Usage, len(inv.migs))
	for i, m := range inv.migs {
		u := Usage{Index: m.info.Index, UUID: m.info.UUID}
		p := &probe{logger: inv.logger.With("mig", m.info.UUID), level: slog.LevelDebug}
		if v, ok := query(p, "memory", m.dev.GetMemoryInfo); ok {
			u.MemoryUsedBytes, u.MemoryUsedMiB = v.Used, v.Used/(1<<20)
		}
		out[i] = u
	}
	return out
}
