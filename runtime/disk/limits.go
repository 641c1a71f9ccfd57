package disk

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// CPURentalDivisor sizes the default disk limit of a rental without GPUs on
// a host without GPUs: an eighth of what the disk allocates, as
// runtime/share sizes its memory.
const CPURentalDivisor = 8

// usedTimeout bounds the measurement of the other rentals' usage at a
// start.
const usedTimeout = 20 * time.Second

// Limits is the runtime.ReservationKind of disk: every rental gets a limit
// on its writable layer, recorded in runtime.LabelDiskLimitBytes, and a
// start is refused (a *FullError, 409 "disk") when the rentals' limits
// summed would not fit in what the disk allocates:
//
//	free space at Path + what rentals already wrote there − ReserveBytes
//
// (what a rental wrote counts up to its limit: its limit covers it). A
// start is refused as well while free space is below ReserveBytes.
//
// Measuring every rental at every start would make a burst of starts
// measure quadratically many writable layers. A start is decided instead
// on the latest measurement (the Watcher's pass, through Observe, or the
// last fresh one a start took), with free space read now. That finds no
// more than a fresh measurement would unless a rental deleted some of what
// it wrote since (see allocatableLocked), so a start it admits is
// admitted, and one it refuses is measured afresh and decided on that: a
// stale measurement costs time, never a wrong refusal. A terminate counts
// what its rental wrote as freed.
//
// A rental naming no limit gets Default; when Default is zero, its share
// of what the disk allocates now by the GPUs it holds (n of the host's
// GPUs get n/GPUs of it); a rental without GPUs gets one GPU's share, or
// on a host without GPUs 1/CPURentalDivisor.
type Limits struct {
	// Path is the file system rentals' writable layers are on
	// (CONTAINERD_ROOT, or Docker's data root).
	Path string
	// ReserveBytes is what is kept free for the host (DISK_RESERVE_GB).
	ReserveBytes uint64
	// Default is the limit of a rental naming none (RENTAL_DISK_GB);
	// zero: its share.
	Default uint64
	// GPUs is the number of GPUs on the host.
	GPUs int
	// Free measures free space (default: the package's Free).
	Free func(path string) (uint64, error)
	// Used measures a rental's writable layer (the back end's DiskUsed);
	// nil: what rentals wrote is not counted back.
	Used func(ctx context.Context, id string) (uint64, error)
	// Promised is what the same file system owes others and has not
	// handed out yet (volumes' sizes not yet written: runtime/volume's
	// Store.Promised, where VOLUME_DIR shares the disk); taken off what
	// the disk allocates. Nil: nothing.
	Promised func() uint64

	mu   sync.Mutex
	held map[string]uint64
	// last is the latest measurement of the disk (nil: none yet); now
	// is the clock that ages it (nil: time.Now).
	last *measurement
	now  func() time.Time
}

var _ runtime.ReservationKind = (*Limits)(nil)

// Name implements runtime.ReservationKind.
func (*Limits) Name() string { return "disk" }

func (l *Limits) free() (uint64, error) {
	if l.Free != nil {
		return l.Free(l.Path)
	}
	return Free(l.Path)
}

func (l *Limits) promised() uint64 {
	if l.Promised == nil {
		return 0
	}
	return l.Promised()
}

// Allocatable is what the disk allocates to rentals now: free space, plus
// what rentals other than except wrote (each up to its limit), less the
// reserve. It also returns the limits the others hold, summed. It measures
// every rental, and starts are decided on that measurement until a newer
// one.
func (l *Limits) Allocatable(ctx context.Context, except string) (alloc, held uint64, err error) {
	written := l.measureWritten(ctx, l.heldIDs(), nil)
	promised := l.promised()
	l.mu.Lock()
	defer l.mu.Unlock()
	m, err := l.keepLocked(written)
	if err != nil {
		return 0, 0, err
	}
	alloc, held = l.allocatableLocked(m, m.free, promised, except)
	return alloc, held, nil
}

// Unwritten is what the rentals' limits promise and they have not written
// yet: each limit less what its rental's writable layer holds (all of it
// when it cannot be measured). A volume store on the same file system
// keeps this free.
func (l *Limits) Unwritten(ctx context.Context) uint64 {
	l.mu.Lock()
	held := maps.Clone(l.held)
	l.mu.Unlock()
	var n uint64
	for id, lim := range held {
		if l.Used != nil {
			if used, err := l.Used(ctx, id); err == nil {
				lim -= min(used, lim)
			}
		}
		n += lim
	}
	return n
}

// share is the default limit of a rental holding gpus GPUs on a disk
// allocating alloc.
func (l *Limits) share(alloc uint64, gpus int) uint64 {
	switch {
	case gpus > 0 && l.GPUs > 0:
		return alloc / uint64(l.GPUs) * uint64(min(gpus, l.GPUs))
	case l.GPUs > 0:
		return alloc / uint64(l.GPUs)
	default:
		return alloc / CPURentalDivisor
	}
}

// Reserve implements runtime.ReservationKind.
func (l *Limits) Reserve(spec *runtime.InstanceSpec) (map[string]string, error) {
	if spec.Resources.DiskGB < 0 {
		return nil, fmt.Errorf("resources.disk_gb must not be negative: %w", errdefs.ErrInvalidArgument)
	}
	free, err := l.free()
	if err != nil {
		// Nothing to measure against: the limit asked for, or the
		// default, is recorded and enforced; the pull reports a full
		// disk itself.
		lim := l.asked(spec)
		if lim == 0 {
			return nil, nil
		}
		return l.hold(spec.ID, lim), nil
	}
	if l.ReserveBytes > 0 && free < l.ReserveBytes {
		return nil, &FullError{Msg: fmt.Sprintf("the host's disk at %s has %d MiB free, below its reserve of %d MiB", l.Path, free>>20, l.ReserveBytes>>20)}
	}
	promised := l.promised()
	if l.Used != nil {
		// The latest measurement decides at no cost when it admits: it
		// never finds more than a fresh one would.
		l.mu.Lock()
		if m := l.usableLocked(free, l.asked(spec) == 0); m != nil {
			if lim, err := l.decideLocked(m, free, promised, spec); err == nil {
				l.holdLocked(spec.ID, lim)
				l.mu.Unlock()
				return limitLabels(lim), nil
			}
		}
		l.mu.Unlock()
	}
	// None, or it refuses: what rentals wrote since is not counted back
	// in it, so only a fresh measurement may refuse.
	ctx, cancel := context.WithTimeout(context.Background(), usedTimeout)
	defer cancel()
	written := l.measureWritten(ctx, l.heldIDs(), nil)
	promised = l.promised()
	l.mu.Lock()
	defer l.mu.Unlock()
	m, err := l.keepLocked(written)
	if err != nil {
		return nil, &FullError{Msg: fmt.Sprintf("measure the host's disk at %s: %v", l.Path, err)}
	}
	lim, err := l.decideLocked(m, m.free, promised, spec)
	if err != nil {
		return nil, err
	}
	l.holdLocked(spec.ID, lim)
	return limitLabels(lim), nil
}

// decideLocked is the limit spec gets by measurement m with free space
// reading freeNow, or the *FullError refusing it; l.mu is held.
func (l *Limits) decideLocked(m *measurement, freeNow, promised uint64, spec *runtime.InstanceSpec) (uint64, error) {
	alloc, held := l.allocatableLocked(m, freeNow, promised, spec.ID)
	lim := l.asked(spec)
	shared := lim == 0
	if shared {
		lim = l.share(alloc, len(spec.GPUs))
	}
	if lim == 0 {
		return 0, &FullError{Msg: fmt.Sprintf("the host's disk at %s has nothing to allocate beyond its reserve of %d GiB", l.Path, l.ReserveBytes>>30)}
	}
	left := uint64(0)
	if alloc > held {
		left = alloc - held
	}
	if held+lim > alloc && shared && left >= lim/2 {
		// A share is the agent's choice, not the tenant's: free space
		// moves (images, logs), so the last share of the disk may come
		// out a little short of the others. It gets what is left, as
		// long as that is most of a share.
		lim = left
	}
	if held+lim > alloc {
		return 0, &FullError{Msg: fmt.Sprintf("a disk limit of %s does not fit: the host's disk allocates %s to rentals, %s of it free of other rentals' limits",
			gibString(lim), gibString(alloc), gibString(left))}
	}
	return lim, nil
}

// asked is the limit spec names, or the configured default.
func (l *Limits) asked(spec *runtime.InstanceSpec) uint64 {
	if spec.Resources.DiskGB > 0 {
		return uint64(spec.Resources.DiskGB) << 30
	}
	return l.Default
}

func (l *Limits) hold(id string, lim uint64) map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.holdLocked(id, lim)
	return limitLabels(lim)
}

func (l *Limits) holdLocked(id string, lim uint64) {
	if l.held == nil {
		l.held = map[string]uint64{}
	}
	l.held[id] = lim
}

func limitLabels(lim uint64) map[string]string {
	return map[string]string{runtime.LabelDiskLimitBytes: strconv.FormatUint(lim, 10)}
}

// gib spells bytes in GiB, to two decimals.
func gibString(b uint64) string { return strconv.FormatFloat(float64(b)/(1<<30), 'f', 2, 64) + " GiB" }

// Release implements runtime.ReservationKind. What the rental had written
// is free space from now on: the latest measurement counts it so.
func (l *Limits) Release(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.held[id]; !ok {
		return
	}
	delete(l.held, id)
	l.forgetLocked(id)
}

// Restore implements runtime.ReservationKind. A container without the
// label (made before disk limits) holds none.
func (l *Limits) Restore(id string, labels map[string]string) error {
	s := labels[runtime.LabelDiskLimitBytes]
	if s == "" {
		return nil
	}
	lim, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("label %s=%q: %w", runtime.LabelDiskLimitBytes, s, errdefs.ErrInvalidArgument)
	}
	l.hold(id, lim)
	return nil
}

// Holdings implements runtime.ReservationKind.
func (l *Limits) Holdings() map[string]map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]map[string]string, len(l.held))
	for id, lim := range l.held {
		out[id] = limitLabels(lim)
	}
	return out
}

// Records implements runtime.ReservationKind.
func (*Limits) Records(key string) bool {
	return strings.HasPrefix(key, runtime.LabelPrefix+"disk.")
}

// Held returns the limits of every rental, summed.
func (l *Limits) Held() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n uint64
	for _, lim := range l.held {
		n += lim
	}
	return n
}
