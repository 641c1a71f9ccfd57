package gpu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
)

// HealthFileName is the file, under STATE_DIR, that remembers benched GPUs
// across agent restarts.
const HealthFileName = "gpu-health.json"

// healthFile is the on-disk form of the benched GPUs:
//
//	{"benched": {"GPU-5e2c…": {"reason": "xid 79", "since": "2025-01-02T03:04:05Z"}},
//	 "faults": {"rental-1": [{"gpu": "GPU-5e2c…", "index": 0, "kind": "xid", "xid": 79, …}]}}
//
// An operator returns a GPU to service, after resetting or replacing it,
// by removing its entry (or the file) and restarting the agent. Faults are
// the GPU faults of each instance still holding the GPUs, which GET
// /instances/{id} shows; they are dropped when the instance releases them.
type healthFile struct {
	Benched map[string]benchedGPU `json:"benched"`
	Faults  map[string][]Fault    `json:"faults,omitempty"`
}

type benchedGPU struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// RememberHealth makes the GPUs benched by a fatal Xid, a double-bit ECC
// error or a lost GPU stay benched across restarts: it reads path (a
// missing file is an empty one), takes every GPU listed there out of
// service, and from then on records each GPU that turns unhealthy there
// before the change is published. Call it once, right after Open and
// before the allocator hands anything out.
//
// A file that cannot be read or parsed is an error naming it: renting out
// a GPU that was benched for a hardware fault is worse than not starting.
// Entries for GPUs not in the inventory are kept, since the GPU may only
// be missing for now.
func (inv *Inventory) RememberHealth(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%w: GPU health file %q is not absolute", errdefs.ErrInvalidArgument, path)
	}
	f, err := readHealthFile(path)
	if err != nil {
		return err
	}
	inv.mu.Lock()
	inv.healthPath = path
	inv.benched = f.Benched
	inv.faults = f.Faults
	var restored []*gpuState
	for uuid, b := range f.Benched {
		g, ok := inv.byUUID[uuid]
		if !ok || g.unhealthy != "" {
			continue
		}
		g.unhealthy = b.Reason
		restored = append(restored, g)
	}
	inv.mu.Unlock()
	for _, g := range restored {
		inv.logger.Warn("GPU stays out of service: benched before the agent restarted",
			"gpu", g.info.UUID, "index", g.info.Index, "reason", g.unhealthy,
			"since", f.Benched[g.info.UUID].Since, "file", path)
	}
	return nil
}

func readHealthFile(path string) (healthFile, error) {
	f := healthFile{Benched: map[string]benchedGPU{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("read GPU health file %s: %w", path, err)
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return f, fmt.Errorf("%w: GPU health file %s is not valid: %w (fix or remove it)", errdefs.ErrInvalidArgument, path, err)
	}
	if f.Benched == nil {
		f.Benched = map[string]benchedGPU{}
	}
	return f, nil
}

// rememberLocked records g as benched for reason in the health file, when
// one is set. inv.mu is held, so writes are serialised; a write that fails
// is logged, and the GPU stays benched for this run anyway.
func (inv *Inventory) rememberLocked(g *gpuState, reason string) {
	if inv.healthPath == "" {
		return
	}
	if _, ok := inv.benched[g.info.UUID]; ok {
		return
	}
	inv.benched[g.info.UUID] = benchedGPU{Reason: reason, Since: time.Now().UTC()}
	if err := inv.writeHealthLocked(); err != nil {
		inv.logger.Error("could not record the benched GPU; it will be back in service after a restart",
			"gpu", g.info.UUID, "file", inv.healthPath, "error", err)
	}
}

// writeHealthLocked writes the health file, when one is set; inv.mu is
// held. A failure is returned and logged.
func (inv *Inventory) writeHealthLocked() error {
	if inv.healthPath == "" {
		return nil
	}
	err := writeHealthFile(inv.healthPath, healthFile{Benched: inv.benched, Faults: inv.faults})
	if err != nil {
		inv.logger.Error("could not write the GPU health file", "file", inv.healthPath, "error", err)
	}
	return err
}

// writeHealthFile replaces path atomically, mode 0600.
func writeHealthFile(path string, f healthFile) (err error) {
	// encoding/json sorts the map's keys: the file diffs well.
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".gpu-health-*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(append(data, '\n')); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
