package gpu

import (
	"context"
	"fmt"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/containerd/errdefs"
)

// ReasonGPULost is the UnhealthyReason of a GPU that NVML reports as lost
// (fallen off the bus).
const ReasonGPULost = "gpu lost"

// ReasonDoubleBitECC is the UnhealthyReason of a GPU that reported an
// uncorrectable (double-bit) memory error.
const ReasonDoubleBitECC = "double-bit ECC error"

// StatusUnhealthy is the Status of a gpu.health event.
const StatusUnhealthy = "unhealthy"

const (
	// healthEvents are the NVML events that can take a GPU out of service.
	// Single-bit ECC errors are corrected by the hardware and are left out.
	healthEvents = uint64(nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError)
	// healthWaitTimeout bounds each wait for an event, and so how long the
	// watcher takes to notice that its context is done.
	healthWaitTimeout = time.Second
	// maxHealthBackoff caps the pause after repeated wait failures, which
	// NVML can return at once and forever (a lost GPU in the set).
	maxHealthBackoff = 30 * time.Second
)

// WatchHealth listens for NVML's critical-error events on every GPU until ctx
// is done, taking a GPU out of service on an Xid that needs a GPU reset or
// service (benchingXids) or on a double-bit ECC error. Each GPU that turns
// unhealthy is published once on pub as a gpu.health event, with InstanceID
// set when an instance holds it; GPUs found lost by Usage are published there
// too from then on. A GPU stays unhealthy across restarts when RememberHealth
// was called, since these errors need a GPU reset.
//
// It returns nil at once on a host without NVML or without GPUs, nil when ctx
// is done, and an error when events cannot be set up at all. Call it once,
// from its own goroutine.
func (inv *Inventory) WatchHealth(ctx context.Context, pub Publisher) (err error) {
	if inv.lib == nil || len(inv.gpus) == 0 {
		return nil
	}
	inv.mu.Lock()
	if inv.watching {
		inv.mu.Unlock()
		return errdefs.ErrFailedPrecondition.WithMessage("GPU health watcher already running")
	}
	inv.watching = true
	inv.pub = pub
	inv.mu.Unlock()
	defer func() {
		inv.mu.Lock()
		inv.watching = false
		inv.mu.Unlock()
		// NVML does not panic, but a partial fake does; that must end the
		// watcher with an error, not the agent.
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: GPU health watcher: NVML call panicked: %v", errdefs.ErrInternal, r)
		}
	}()

	set, ret := inv.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		return nvmlError("create NVML event set", ret)
	}
	defer inv.lib.EventSetFree(set)

	if inv.register(set) == 0 {
		inv.logger.Info("no GPU supports health events; not watching GPU health")
		return nil
	}

	backoff := time.Duration(0)
	for {
		if backoff > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		e, ret := inv.lib.EventSetWait(set, uint32(healthWaitTimeout/time.Millisecond))
		switch ret {
		case nvml.SUCCESS:
			backoff = 0
			inv.handleEvent(e)
		case nvml.ERROR_TIMEOUT:
			backoff = 0
		case nvml.ERROR_GPU_IS_LOST:
			// The wait does not say which GPU; sampling each one marks
			// the lost ones.
			if backoff == 0 {
				inv.logger.Warn("NVML reports a lost GPU; probing all GPUs")
			}
			inv.Usages()
			backoff = nextBackoff(backoff)
		default:
			if backoff == 0 {
				inv.logger.Warn("waiting for GPU events failed; retrying", "error", ret.Error())
			}
			backoff = nextBackoff(backoff)
		}
	}
}

func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return time.Second
	}
	return min(2*d, maxHealthBackoff)
}

// register asks for health events on every GPU and returns on how many that
// worked. GPUs that do not support them are watched no further; that is not
// an error, since many consumer GPUs report no Xids.
func (inv *Inventory) register(set nvml.EventSet) int {
	n := 0
	for _, g := range inv.gpus {
		log := inv.logger.With("gpu", g.info.UUID, "index", g.info.Index)
		types := healthEvents
		if supported, ret := g.dev.GetSupportedEventTypes(); ret == nvml.SUCCESS {
			types &= supported
		}
		if types == 0 {
			log.Info("GPU supports no health events")
			continue
		}
		switch ret := g.dev.RegisterEvents(types, set); ret {
		case nvml.SUCCESS:
			n++
		case nvml.ERROR_NOT_SUPPORTED:
			log.Info("GPU supports no health events")
		case nvml.ERROR_GPU_IS_LOST:
			inv.markUnhealthy(g, ReasonGPULost)
		default:
			log.Warn("registering GPU health events failed", "error", ret.Error())
		}
	}
	return n
}

// handleEvent acts on one NVML event: it marks the GPU unhealthy when the
// event means the GPU itself is failing, and only logs errors that the
// application caused.
func (inv *Inventory) handleEvent(e nvml.EventData) {
	g := inv.eventGPU(e)
	if g == nil {
		return
	}
	switch e.EventType {
	case nvml.EventTypeXidCriticalError:
		xid := e.EventData
		if !isBenchingXid(xid) {
			holder := ""
			if h := inv.holderTable(); h != nil {
				holder = h.holderOf(g.info.UUID)
			}
			inv.logger.Info("Xid on GPU that needs no reset; GPU stays in service",
				"gpu", g.info.UUID, "index", g.info.Index, "xid", xid, "instance_id", holder)
			inv.reportFault(g, FaultXid, xid, xidMeaning(xid), e.GpuInstanceId)
			return
		}
		inv.logger.Warn("Xid that needs a GPU reset or service", "gpu", g.info.UUID, "xid", xid, "meaning", benchingXids[xid])
		inv.markUnhealthy(g, fmt.Sprintf("xid %d", xid))
		inv.reportFault(g, FaultXid, xid, xidMeaning(xid), e.GpuInstanceId)
	case nvml.EventTypeDoubleBitEccError:
		inv.markUnhealthy(g, ReasonDoubleBitECC)
		inv.reportFault(g, FaultECC, 0, ReasonDoubleBitECC, NoInstance)
	default:
		inv.logger.Debug("ignoring NVML event", "gpu", g.info.UUID, "type", e.EventType, "data", e.EventData)
	}
}

// eventGPU finds the inventory's GPU for an event, by UUID since NVML hands
// back a fresh handle value.
func (inv *Inventory) eventGPU(e nvml.EventData) *gpuState {
	if e.Device == nil {
		inv.logger.Warn("NVML event without a GPU; ignoring it", "type", e.EventType, "data", e.EventData)
		return nil
	}
	uuid, ret := e.Device.GetUUID()
	if ret != nvml.SUCCESS {
		inv.logger.Warn("cannot tell which GPU an NVML event is for; ignoring it",
			"type", e.EventType, "data", e.EventData, "error", ret.Error())
		return nil
	}
	g, ok := inv.byUUID[uuid]
	if !ok {
		inv.logger.Warn("NVML event for a GPU not in the inventory; ignoring it", "gpu", uuid)
		return nil
	}
	return g
}

// benchingXids are the Xids that take a GPU out of service: those NVIDIA's
// Xid catalogue says need a GPU reset, a node reboot or hardware service.
// Every other Xid (a tenant's illegal memory access, a contained ECC error
// that only killed the offending process, an informational recording) is
// logged and the GPU stays in service, so that a tenant's own faults cannot
// take GPUs away from everyone. The README lists them.
var benchingXids = map[uint64]string{
	48:  "double-bit ECC error",
	62:  "internal micro-controller halt",
	64:  "ECC page retirement or row remapping recording failure",
	74:  "NVLink error",
	79:  "GPU has fallen off the bus",
	95:  "uncontained ECC error",
	119: "GSP RPC timeout",
	120: "GSP error",
	140: "unrecovered ECC error",
	154: "GPU recovery action changed: reset or reboot required",
}

// isBenchingXid reports whether xid takes the GPU out of service.
func isBenchingXid(xid uint64) bool {
	_, ok := benchingXids[xid]
	return ok
}

// markUnhealthy takes g out of service and publishes that, the first time
// only: NVML tends to repeat an Xid many times for one failure.
func (inv *Inventory) markUnhealthy(g *gpuState, reason string) {
	inv.mu.Lock()
	if g.unhealthy != "" {
		inv.mu.Unlock()
		return
	}
	g.unhealthy = reason
	// Recorded before anyone hears of it: a restart right after must not
	// put the GPU back in the pool.
	inv.rememberLocked(g, reason)
	pub, holders := inv.pub, inv.holders
	inv.mu.Unlock()

	// The holder is asked after inv.mu is released (lock order). An
	// allocation racing with this either saw the GPU healthy and is
	// finished by the time holderOf gets the allocator's lock, so it is
	// named here, or sees it unhealthy and leaves it.
	holder := ""
	if holders != nil {
		holder = holders.holderOf(g.info.UUID)
	}
	msg := fmt.Sprintf("GPU %d (%s) is unhealthy: %s", g.info.Index, g.info.UUID, reason)
	if holder != "" {
		msg += "; held by instance " + holder
	}
	inv.logger.Warn("GPU taken out of service", "gpu", g.info.UUID, "index", g.info.Index,
		"reason", reason, "instance_id", holder)
	if pub != nil {
		pub.Publish(Event{
			Type:       EventHealth,
			InstanceID: holder,
			Status:     StatusUnhealthy,
			GPU:        g.info.UUID,
			Message:    msg,
		})
	}
}

func (inv *Inventory) holderTable() holderLookup {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.holders
}
