package disk

import (
	"context"
	"time"
)

// measurementMaxAge is how long a measurement of the disk serves
// admissions; the Watcher's passes (every DISK_WATCH_INTERVAL) renew it.
const measurementMaxAge = 3 * DefaultWatchInterval

// measurement is one consistent reading of the disk: what each rental held
// then had written, and free space read after all of them. Read in that
// order, a rental writing while it is taken can only make free space look
// smaller and never be counted twice, so a measurement underestimates what
// the disk allocates.
type measurement struct {
	// free is free space at Path after the rentals were measured, plus
	// what rentals released since had written (their layers are gone).
	free uint64
	// written is what each rental's writable layer held, by ID; a
	// rental admitted since, or that could not be measured, is absent:
	// it counts as having written nothing.
	written map[string]uint64
	at      time.Time
}

func (l *Limits) clock() time.Time {
	if l.now != nil {
		return l.now()
	}
	return time.Now()
}

// measureWritten returns what the writable layers of the rentals ids
// hold: as known says where it says, else measured now; a rental that
// cannot be measured is left out.
func (l *Limits) measureWritten(ctx context.Context, ids []string, known map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(ids)+len(known))
	for id, n := range known {
		out[id] = n
	}
	if l.Used == nil {
		return out
	}
	for _, id := range ids {
		if _, ok := out[id]; ok {
			continue
		}
		if n, err := l.Used(ctx, id); err == nil {
			out[id] = n
		}
	}
	return out
}

// heldIDs lists the rentals holding a limit.
func (l *Limits) heldIDs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := make([]string, 0, len(l.held))
	for id := range l.held {
		ids = append(ids, id)
	}
	return ids
}

// keepLocked reads free space and keeps it, with written, as the latest
// measurement; l.mu is held, so that a Release comes either before (its
// layer's space is in free space already, and it is left out here) or
// after (and adjusts the measurement).
func (l *Limits) keepLocked(written map[string]uint64) (*measurement, error) {
	free, err := l.free()
	if err != nil {
		return nil, err
	}
	m := &measurement{free: free, written: make(map[string]uint64, len(written)), at: l.clock()}
	for id, n := range written {
		if _, ok := l.held[id]; ok {
			m.written[id] = n
		}
	}
	l.last = m
	return m, nil
}

// Observe takes the usage the Watcher's pass measured (writable layers by
// rental ID) as the latest measurement of the disk, measuring only the
// rentals holding a limit that it left out (those not running), then
// free space. Starts until the next pass are decided on it without
// measuring every rental again.
func (l *Limits) Observe(ctx context.Context, used map[string]uint64) {
	written := l.measureWritten(ctx, l.heldIDs(), used)
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.keepLocked(written)
}

// usableLocked returns the latest measurement while it may decide a start
// whose free space reads freeNow, or nil; l.mu is held. A default share
// is sized by it, so for one free space must have moved by 1% at most
// since: what rentals wrote since is not counted back, and space freed
// since not at all, so a share would come out smaller than a fresh
// measurement's by that much.
func (l *Limits) usableLocked(freeNow uint64, shared bool) *measurement {
	m := l.last
	if m == nil || l.clock().Sub(m.at) > measurementMaxAge {
		return nil
	}
	if shared && max(freeNow, m.free)-min(freeNow, m.free) > m.free/100 {
		return nil
	}
	return m
}

// allocatableLocked is what the disk allocates to rentals other than
// except by m, when free space reads freeNow: the smaller of m's free
// space and freeNow, plus what the rentals m measured wrote (each up to
// its limit), less promised and the reserve; l.mu is held. It also returns
// the limits the others hold, summed.
//
// It is never more than a fresh measurement would find, as long as no
// rental's writable layer shrank since m: what rentals wrote since m
// lowers freeNow and is not counted back, what a rental admitted since
// wrote is not counted at all, and space freed since m (by a rental
// released) counts only once it is free now as well. So a start it
// admits a fresh measurement admits too; one it refuses is measured
// afresh.
func (l *Limits) allocatableLocked(m *measurement, freeNow, promised uint64, except string) (alloc, held uint64) {
	total := min(m.free, freeNow)
	for id, lim := range l.held {
		if id == except {
			continue
		}
		held += lim
		total += min(m.written[id], lim)
	}
	total -= min(total, promised)
	if total <= l.ReserveBytes {
		return 0, held
	}
	return total - l.ReserveBytes, held
}

// forgetLocked adjusts the latest measurement for the release of id, whose
// writable layer is gone (a rental is released once its container is
// removed): what it had written is free space now, not counted in the
// measurement's. l.mu is held.
func (l *Limits) forgetLocked(id string) {
	m := l.last
	if m == nil {
		return
	}
	if n, ok := m.written[id]; ok {
		m.free += n
		delete(m.written, id)
	}
}
