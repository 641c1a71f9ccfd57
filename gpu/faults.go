package gpu

import (
	"fmt"
	"slices"
	"time"
)

// maxFaultsPerInstance bounds what is kept of one instance's GPU faults:
// a GPU in trouble can report the same Xid many times a second. The first
// ones are kept, since the first fault is the one that explains the rest.
const maxFaultsPerInstance = 32

// xidMeanings says what the Xids seen most in rentals mean, beyond those
// that bench a GPU (benchingXids). Most of them are the application's own
// error: the tenant needs to hear of them, the GPU stays in service.
var xidMeanings = map[uint64]string{
	13:  "graphics engine exception (usually an error in the application)",
	31:  "GPU memory page fault (usually an error in the application)",
	43:  "GPU stopped processing (the application hit an error)",
	45:  "preemptive cleanup after a fault (the application was stopped)",
	63:  "ECC page retirement or row remapping recorded",
	68:  "video processor exception",
	92:  "high single-bit ECC error rate",
	94:  "contained ECC error (the application was stopped)",
	109: "context switch timeout",
}

func xidMeaning(xid uint64) string {
	if m, ok := benchingXids[xid]; ok {
		return m
	}
	if m, ok := xidMeanings[xid]; ok {
		return m
	}
	return fmt.Sprintf("Xid %d (see NVIDIA's Xid catalog)", xid)
}

// reportFault tells the instance holding g, if any, of a fault on it:
// recorded first (in memory and, with RememberHealth, in the health file),
// so that GET /instances/{id} shows it by the time the instance.gpu_fault
// event arrives, then published.
//
// A fault on a GPU in MIG mode is told to the holder of each of its MIG
// devices, naming the MIG device it holds: NVML reports it on the GPU.
//
// NVML names the GPU instance an Xid arose in (gi; NoInstance when it
// concerns the whole GPU): a fault that leaves the GPU in service is then
// told only to the holder of that instance's MIG device, not to its
// neighbours, whose work it did not touch.
func (inv *Inventory) reportFault(g *gpuState, kind string, xid uint64, meaning string, gi uint32) {
	benched := inv.unhealthyReason(g) != ""
	for _, unit := range append([]*gpuState{g}, inv.migChildren(g)...) {
		if unit.mig != nil && !benched && gi != NoInstance && uint32(unit.mig.desc.GPUInstanceID) != gi {
			continue
		}
		inv.reportFaultOn(unit, kind, xid, meaning)
	}
}

// NoInstance is NVML's GPU instance ID of an event that concerns the whole
// GPU rather than one GPU instance.
const NoInstance = 0xFFFFFFFF

func (inv *Inventory) reportFaultOn(g *gpuState, kind string, xid uint64, meaning string) {
	holders := inv.holderTable()
	if holders == nil {
		return
	}
	holder := holders.holderOf(g.info.UUID)
	if holder == "" {
		return
	}
	f := Fault{
		GPU: g.info.UUID, Index: g.info.Index, Kind: kind, Xid: xid, Meaning: meaning,
		Benched: inv.unhealthyReason(g) != "", Time: time.Now().UTC(),
	}
	inv.mu.Lock()
	if inv.faults == nil {
		inv.faults = map[string][]Fault{}
	}
	kept := len(inv.faults[holder]) < maxFaultsPerInstance
	if kept {
		inv.faults[holder] = append(inv.faults[holder], f)
		inv.writeHealthLocked()
	}
	pub := inv.pub
	inv.mu.Unlock()

	msg := fmt.Sprintf("GPU %d (%s) reported %s: %s", g.info.Index, g.info.UUID, faultName(kind, xid), meaning)
	if f.Benched {
		msg += "; the GPU is out of service"
	}
	inv.logger.Warn("GPU fault on a rented GPU", "instance_id", holder, "gpu", g.info.UUID, "index", g.info.Index,
		"kind", kind, "xid", xid, "benched", f.Benched, "recorded", kept)
	if pub != nil {
		pub.Publish(Event{
			Type:       EventFault,
			InstanceID: holder,
			GPU:        g.info.UUID,
			Message:    msg,
			Fault:      &f,
		})
	}
}

func faultName(kind string, xid uint64) string {
	if kind == FaultXid {
		return fmt.Sprintf("Xid %d", xid)
	}
	return "a double-bit ECC error"
}

// Faults lists the faults reported on GPUs while instanceID held them,
// oldest first; nil when none.
func (inv *Inventory) Faults(instanceID string) []Fault {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return slices.Clone(inv.faults[instanceID])
}

// forgetFaults drops instanceID's faults once it released its GPUs: an
// instance ID may be used again for a new rental.
func (inv *Inventory) forgetFaults(instanceID string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if _, ok := inv.faults[instanceID]; !ok {
		return
	}
	delete(inv.faults, instanceID)
	inv.writeHealthLocked()
}
