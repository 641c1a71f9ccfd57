package gpu

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
)

// Request says which GPUs an instance wants: either Count of any free, healthy
// GPUs, or exactly the GPUs named in IDs (each a UUID or a decimal NVML
// index, or a MIG device's UUID), or one free MIG device of MIGProfile. The
// zero Request asks for no GPUs.
type Request struct {
	Count      int
	IDs        []string
	MIGProfile string
}

// Allocator hands whole GPUs to instances, each GPU to at most one instance.
// Its table lives only in memory; after an agent restart it is rebuilt with
// Restore from the GPU UUIDs recorded in the containers' labels. Its methods
// are safe for concurrent use.
type Allocator struct {
	inv    *Inventory
	logger *slog.Logger

	// mu is taken before Inventory.mu, never after.
	mu     sync.Mutex
	holder map[string]string      // GPU UUID -> instance ID
	held   map[string][]*gpuState // instance ID -> its GPUs, by index
}

// NewAllocator returns an allocator of inv's GPUs with nothing held, and makes
// inv report holders in GPUs and in health events. An inventory has one
// allocator; a second replaces the first in those reports.
func NewAllocator(inv *Inventory) *Allocator {
	a := &Allocator{
		inv:    inv,
		logger: inv.logger,
		holder: map[string]string{},
		held:   map[string][]*gpuState{},
	}
	inv.attach(a)
	return a
}

// Reserve gives instanceID the GPUs req asks for, or fails without
// reserving anything. A count gets the best-connected free set that leaves
// the best sets for later requests (see place); named GPUs are given as
// named. Asking again with the same request
// returns what the instance already holds (even a GPU that has since turned
// unhealthy: the holder learns that from the gpu.health event), so a retried
// start is harmless; asking for something else while holding GPUs is a
// Conflict.
//
// Errors: InvalidArgument for a malformed request or an unknown GPU (named in
// the message); Conflict when too few GPUs are free (the message says how
// many are), when a named GPU is held by another instance, or when it is
// unhealthy.
func (a *Allocator) Reserve(instanceID string, req Request) ([]Device, error) {
	if instanceID == "" {
		return nil, errdefs.ErrInvalidArgument.WithMessage("instance ID is empty")
	}
	wanted, err := a.resolve(req)
	if err != nil {
		return nil, err
	}

	a.mu.Lock()
	defer a.mu.Unlock()

	if have := a.held[instanceID]; len(have) > 0 {
		if sameRequest(have, req, wanted) {
			return devices(have), nil
		}
		return nil, errdefs.ErrConflict.WithMessage(fmt.Sprintf(
			"instance %s already holds GPUs %s; release them before asking for others", instanceID, uuids(have)))
	}
	if req.Count == 0 && len(wanted) == 0 && req.MIGProfile == "" {
		return nil, nil
	}

	if req.MIGProfile != "" {
		free, have := a.freeMIGLocked(req.MIGProfile)
		switch {
		case !a.inv.migRentals:
			return nil, errdefs.ErrConflict.WithMessage(fmt.Sprintf(
				"MIG device %s requested, but this host does not rent MIG devices (MIG_RENTALS is off)", req.MIGProfile))
		case len(free) == 0:
			return nil, errdefs.ErrConflict.WithMessage(fmt.Sprintf(
				"requested a MIG device of profile %s, none free (the host's profiles: %s)", req.MIGProfile, orNone(have)))
		}
		wanted = []*gpuState{a.pickMIG(free)}
	} else if wanted == nil {
		free := a.freeLocked()
		if len(free) < req.Count {
			return nil, errdefs.ErrConflict.WithMessage(fmt.Sprintf(
				"requested %s, %d free", plural(req.Count, "GPU"), len(free)))
		}
		wanted = a.inv.place(free, req.Count)
	} else {
		for _, g := range wanted {
			if h := a.holder[g.info.UUID]; h != "" {
				return nil, errdefs.ErrConflict.WithMessage(fmt.Sprintf(
					"GPU %d (%s) is held by instance %s", g.info.Index, g.info.UUID, h))
			}
			if reason := a.inv.unhealthyReason(g); reason != "" {
				return nil, errdefs.ErrConflict.WithMessage(fmt.Sprintf(
					"GPU %d (%s) is unhealthy: %s", g.info.Index, g.info.UUID, reason))
			}
			if g.mig == nil && g.info.MIGMode == MIGEnabled {
				return nil, errdefs.ErrConflict.WithMessage(fmt.Sprintf(
					"GPU %d (%s) has MIG enabled and cannot be rented whole", g.info.Index, g.info.UUID))
			}
		}
	}

	for _, g := range wanted {
		a.holder[g.info.UUID] = instanceID
	}
	a.held[instanceID] = wanted
	a.logger.Info("reserved GPUs", "instance_id", instanceID, "gpus", uuids(wanted))
	return devices(wanted), nil
}

// resolve validates req and, for explicit IDs, finds the GPUs in index order.
// It returns nil for a count request. The inventory never changes, so this
// needs no lock.
func (a *Allocator) resolve(req Request) ([]*gpuState, error) {
	switch {
	case req.Count < 0:
		return nil, errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("GPU count %d is negative", req.Count))
	case req.MIGProfile != "" && !ValidMIGProfile(req.MIGProfile):
		return nil, errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("%q is not a MIG profile (like 1g.10gb)", req.MIGProfile))
	case req.MIGProfile != "" && (req.Count > 1 || len(req.IDs) > 0):
		return nil, errdefs.ErrInvalidArgument.WithMessage("a MIG profile asks for one MIG device: give no GPU count above 1 and no GPU IDs with it")
	case req.MIGProfile != "":
		return nil, nil
	case req.Count > 0 && len(req.IDs) > 0:
		return nil, errdefs.ErrInvalidArgument.WithMessage("ask for a GPU count or for GPU IDs, not both")
	case len(req.IDs) == 0:
		return nil, nil
	}
	out := make([]*gpuState, 0, len(req.IDs))
	for _, id := range req.IDs {
		g, ok := a.inv.lookup(strings.TrimSpace(id))
		if !ok {
			return nil, errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("unknown GPU %q", id))
		}
		if slices.Contains(out, g) {
			return nil, errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("GPU %q is named twice", id))
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(x, y *gpuState) int { return x.info.Index - y.info.Index })
	return out, nil
}

// sameRequest reports whether req, asked again, is satisfied by have.
func sameRequest(have []*gpuState, req Request, wanted []*gpuState) bool {
	if req.MIGProfile != "" {
		return len(have) == 1 && have[0].mig != nil && have[0].mig.desc.Profile == req.MIGProfile
	}
	if wanted != nil {
		return slices.Equal(have, wanted)
	}
	return req.Count == len(have)
}

// freeLocked lists the healthy GPUs nobody holds, by index. A GPU with MIG
// enabled is left out: it is rented as MIG devices or not at all, and CDI
// has no whole-GPU device for it.
func (a *Allocator) freeLocked() []*gpuState {
	var free []*gpuState
	for _, g := range a.inv.gpus {
		if a.holder[g.info.UUID] == "" && a.inv.unhealthyReason(g) == "" && g.info.MIGMode != MIGEnabled {
			free = append(free, g)
		}
	}
	return free
}

// Release frees every GPU instanceID holds. Releasing an instance that holds
// nothing does nothing, so a retried terminate is harmless.
func (a *Allocator) Release(instanceID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	have := a.held[instanceID]
	if len(have) == 0 {
		return
	}
	for _, g := range have {
		delete(a.holder, g.info.UUID)
	}
	delete(a.held, instanceID)
	a.inv.forgetFaults(instanceID)
	a.logger.Info("released GPUs", "instance_id", instanceID, "gpus", uuids(have))
}

// Held lists the GPUs instanceID holds, by index; nil if none.
func (a *Allocator) Held(instanceID string) []Device {
	a.mu.Lock()
	defer a.mu.Unlock()
	return devices(a.held[instanceID])
}

// Restore records that instanceID holds the GPUs with the given UUIDs, as read
// back from its container's labels when the agent starts. It adds to what the
// instance already holds, and it includes unhealthy GPUs, because the
// container has them whatever their state.
//
// A UUID that is not in the inventory (the GPU fell off the bus or was
// removed) is logged and not recorded: the inventory is fixed at Open, so such
// a GPU can never be handed to anyone during this run, and when it is back
// the next agent start restores it from the same labels. A GPU that another
// instance already holds stays with that instance, never moves; Restore
// records the rest and returns a Conflict error naming each such GPU.
func (a *Allocator) Restore(instanceID string, uuidList []string) error {
	if instanceID == "" {
		return errdefs.ErrInvalidArgument.WithMessage("instance ID is empty")
	}
	a.mu.Lock()
	defer a.mu.Unlock()

	var errs []error
	have := a.held[instanceID]
	for _, u := range uuidList {
		g, ok := a.inv.byUUID[u]
		if !ok {
			g, ok = a.inv.byMIG[u]
		}
		if !ok {
			a.logger.Warn("restored instance names a GPU that is not in the inventory; leaving it out",
				"instance_id", instanceID, "gpu", u)
			continue
		}
		switch h := a.holder[u]; h {
		case instanceID:
			continue
		case "":
		default:
			a.logger.Error("two instances claim the same GPU; it stays with the first",
				"gpu", u, "holder", h, "claimant", instanceID)
			errs = append(errs, errdefs.ErrConflict.WithMessage(fmt.Sprintf(
				"GPU %d (%s) is already held by instance %s", g.info.Index, u, h)))
			continue
		}
		a.holder[u] = instanceID
		have = append(have, g)
	}
	if len(have) > 0 {
		slices.SortFunc(have, func(x, y *gpuState) int { return x.info.Index - y.info.Index })
		a.held[instanceID] = have
	}
	return errors.Join(errs...)
}

// Counts reports how many GPUs are free (healthy and unheld) and how many the
// host has in all.
func (a *Allocator) Counts() (free, total int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.freeLocked()), len(a.inv.gpus)
}

// BestFree says, for sets of 1, 2, 4 and 8 GPUs, whether that many are
// free and how well connected the best such set is.
func (a *Allocator) BestFree() []BestFree {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inv.bestFree(a.freeLocked())
}

// holderOf implements holderLookup.
func (a *Allocator) holderOf(uuid string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.holder[uuid]
}

func devices(gs []*gpuState) []Device {
	if len(gs) == 0 {
		return nil
	}
	out := make([]Device, len(gs))
	for i, g := range gs {
		out[i] = g.device()
	}
	return out
}

func uuids(gs []*gpuState) string {
	s := make([]string, len(gs))
	for i, g := range gs {
		s[i] = g.info.UUID
	}
	return strings.Join(s, ",")
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// Holders lists every instance holding GPUs with the GPUs it holds, by index.
func (a *Allocator) Holders() map[string][]Device {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string][]Device, len(a.held))
	for id, gs := range a.held {
		out[id] = devices(gs)
	}
	return out
}
