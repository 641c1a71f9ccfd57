package disk

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/host-agent/host-agent/runtime"
)

// fakeRentals lists running rentals with limits, measures what the test
// says they use, and records who was stopped and why.
type fakeRentals struct {
	mu      sync.Mutex
	limits  map[string]uint64
	used    map[string]uint64
	stopped map[string]string
}

func (f *fakeRentals) List(context.Context) ([]runtime.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []runtime.Instance
	for id, lim := range f.limits {
		st := runtime.StatusRunning
		if f.stopped[id] != "" {
			st = runtime.StatusExited
		}
		out = append(out, runtime.Instance{ID: id, Status: st, AgentLabels: map[string]string{
			runtime.LabelDiskLimitBytes: strconv.FormatUint(lim, 10)}})
	}
	return out, nil
}

func (f *fakeRentals) DiskUsed(_ context.Context, id string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.used[id], nil
}

func (f *fakeRentals) StopWithReason(_ context.Context, id, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped[id] = reason
	return nil
}

// A rental over its limit is stopped with reason disk_limit; one under it
// runs on.
func TestWatcherStopsRentalOverItsLimit(t *testing.T) {
	t.Parallel()
	f := &fakeRentals{
		limits:  map[string]uint64{"big": 1 * gib, "small": 1 * gib},
		used:    map[string]uint64{"big": 1*gib + 1, "small": gib / 2},
		stopped: map[string]string{},
	}
	w := &Watcher{Instances: f, Meter: f, Stopper: f}
	if got := w.Check(context.Background()); !slices.Equal(got, []string{"big"}) {
		t.Fatalf("stopped %v, want [big]", got)
	}
	if f.stopped["big"] != runtime.ExitReasonDiskLimit || f.stopped["small"] != "" {
		t.Fatalf("stopped %v", f.stopped)
	}
	if got := w.Check(context.Background()); len(got) != 0 {
		t.Fatalf("second check stopped %v", got)
	}
}

// When the host's free space, less what rentals wrote in the last
// interval, would fall below the reserve, the fastest writer is stopped
// though it is under its limit; a rental that wrote nothing runs on.
func TestWatcherKeepsTheHostAboveItsReserve(t *testing.T) {
	t.Parallel()
	f := &fakeRentals{
		limits:  map[string]uint64{"fast": 100 * gib, "slow": 100 * gib, "idle": 100 * gib},
		used:    map[string]uint64{"fast": 1 * gib, "slow": 1 * gib, "idle": 1 * gib},
		stopped: map[string]string{},
	}
	free := uint64(30 * gib)
	w := &Watcher{Instances: f, Meter: f, Stopper: f, ReserveBytes: 19 * gib,
		Free: func(string) (uint64, error) { return free, nil }}
	if got := w.Check(context.Background()); len(got) != 0 {
		t.Fatalf("first check stopped %v", got)
	}
	f.used["fast"] += 8 * gib
	f.used["slow"] += 1 * gib
	free -= 9 * gib
	if got := w.Check(context.Background()); !slices.Equal(got, []string{"fast"}) {
		t.Fatalf("stopped %v, want [fast] (21 GiB free, 9 GiB written in the interval, 19 reserved)", got)
	}
	if f.stopped["fast"] != runtime.ExitReasonDiskLimit {
		t.Fatalf("reason %q", f.stopped["fast"])
	}
}
