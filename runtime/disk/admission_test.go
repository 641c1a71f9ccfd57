package disk

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

// A burst of starts measures each rental's writable layer about once, not
// once per later start: 50 starts one after the other, each rental
// writing a little after its start, measure at most 50 layers in all
// (every layer at every start would be 1,225).
func TestAdmissionMeasuresEachRentalOncePerBurst(t *testing.T) {
	t.Parallel()
	const n = 50
	d := &fakeDisk{free: 1000 * gib, used: map[string]uint64{}}
	l := d.limits(20*gib, 0, 0)
	for i := range n {
		id := "r" + strconv.Itoa(i)
		if _, err := l.Reserve(&runtime.InstanceSpec{ID: id, Resources: runtime.Resources{DiskGB: 1}}); err != nil {
			t.Fatalf("start %d of %d: %v", i+1, n, err)
		}
		d.used[id] += 1 << 20
		d.free -= 1 << 20
	}
	if got := l.Held(); got != n*gib {
		t.Fatalf("held %d GiB, want %d", got/gib, n)
	}
	if got := d.measured.Load(); got > n {
		t.Fatalf("%d starts measured %d writable layers, want at most %d", n, got, n)
	}
}

// freshly decides spec as a Limits that never measured before would, on
// d as it is now, holding what l holds: what every admission decided
// before measurements were kept.
func freshly(t *testing.T, d *fakeDisk, l *Limits, spec runtime.InstanceSpec) (uint64, bool) {
	t.Helper()
	f := &Limits{Path: l.Path, ReserveBytes: l.ReserveBytes, Default: l.Default, GPUs: l.GPUs,
		Free: func(string) (uint64, error) { return d.free, nil },
		Used: func(_ context.Context, id string) (uint64, error) { return d.used[id], nil }}
	for id, labels := range l.Holdings() {
		if err := f.Restore(id, labels); err != nil {
			t.Fatal(err)
		}
	}
	labels, err := f.Reserve(&spec)
	if err != nil {
		if !isDiskRefusal(err) {
			t.Fatalf("fresh decision on %s: %v", spec.ID, err)
		}
		return 0, false
	}
	return limitOf(t, labels), true
}

// decide asks l to admit spec and takes the limit back: spec stands for
// a start whose outcome the test compares, then gives up.
func decide(t *testing.T, l *Limits, spec runtime.InstanceSpec) (uint64, bool) {
	t.Helper()
	labels, err := l.Reserve(&spec)
	if err != nil {
		if !isDiskRefusal(err) {
			t.Fatalf("decision on %s: %v", spec.ID, err)
		}
		return 0, false
	}
	l.Release(spec.ID)
	return limitOf(t, labels), true
}

// watchOnce runs one pass of a Watcher over the rentals l holds (all
// running) on d, handing its measurement to l.
func watchOnce(t *testing.T, d *fakeDisk, l *Limits) {
	t.Helper()
	r := &fakeRentals{limits: map[string]uint64{}, used: d.used, stopped: map[string]string{}}
	for id, labels := range l.Holdings() {
		r.limits[id] = limitOf(t, labels)
	}
	w := &Watcher{Instances: r, Meter: r, Stopper: r, Measured: l.Observe}
	if stopped := w.Check(context.Background()); len(stopped) != 0 {
		t.Fatalf("the watcher stopped %v", stopped)
	}
}

func asking(id string, gb int64) runtime.InstanceSpec {
	return runtime.InstanceSpec{ID: id, Resources: runtime.Resources{DiskGB: gb}}
}

// Whatever happened on the disk since the last measurement, a start is
// decided as a fresh measurement decides it: admitted or refused, with
// the same limit.
func TestAdmissionDecidesAsAFreshMeasurement(t *testing.T) {
	t.Parallel()
	// Each scenario starts from a (40 GiB) and b (40 GiB) on 100 GiB
	// free with no reserve, on a host without GPUs, and a watcher pass.
	for _, tc := range []struct {
		name string
		then func(t *testing.T, d *fakeDisk, l *Limits)
	}{
		{"nothing changed", func(*testing.T, *fakeDisk, *Limits) {}},
		{"a rental wrote since", func(_ *testing.T, d *fakeDisk, _ *Limits) {
			d.used["a"] += 30 * gib
			d.free -= 30 * gib
		}},
		{"a rental wrote past its limit since", func(_ *testing.T, d *fakeDisk, _ *Limits) {
			d.used["a"] += 50 * gib
			d.free -= 50 * gib
		}},
		{"a rental was terminated since", func(_ *testing.T, d *fakeDisk, l *Limits) {
			d.free += d.used["a"]
			delete(d.used, "a")
			l.Release("a")
		}},
		{"a rental was terminated, its layer not yet freed", func(_ *testing.T, _ *fakeDisk, l *Limits) {
			l.Release("a")
		}},
		{"a rental admitted since wrote", func(t *testing.T, d *fakeDisk, l *Limits) {
			if _, err := l.Reserve(&runtime.InstanceSpec{ID: "c", Resources: runtime.Resources{DiskGB: 10}}); err != nil {
				t.Fatal(err)
			}
			d.used["c"] = 5 * gib
			d.free -= 5 * gib
		}},
		{"an image was pulled since", func(_ *testing.T, d *fakeDisk, _ *Limits) { d.free -= 7 * gib }},
		{"an image was removed since", func(_ *testing.T, d *fakeDisk, _ *Limits) { d.free += 7 * gib }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Around what is left: every asked size from nothing
			// to all of it, and a default share, each on a disk of
			// its own (a decision's fresh measurement would decide
			// the next ones).
			specs := []runtime.InstanceSpec{{ID: "share"}}
			for gb := int64(1); gb <= 70; gb++ {
				specs = append(specs, asking("x"+strconv.FormatInt(gb, 10), gb))
			}
			for _, spec := range specs {
				d := &fakeDisk{free: 100 * gib, used: map[string]uint64{}}
				l := d.limits(0, 0, 0)
				for _, id := range []string{"a", "b"} {
					if _, err := l.Reserve(&runtime.InstanceSpec{ID: id, Resources: runtime.Resources{DiskGB: 40}}); err != nil {
						t.Fatal(err)
					}
				}
				d.used["a"], d.used["b"] = 10*gib, 0
				d.free -= 10 * gib
				watchOnce(t, d, l)
				tc.then(t, d, l)
				wantLim, wantOK := freshly(t, d, l, spec)
				lim, ok := decide(t, l, spec)
				if ok != wantOK || lim != wantLim {
					t.Fatalf("%s asking %d GiB: admitted %v with %d bytes; a fresh measurement: %v with %d",
						spec.ID, spec.Resources.DiskGB, ok, lim, wantOK, wantLim)
				}
			}
		})
	}
}

// A terminate leaves a measurement that counts the space it freed: a
// start needing that space is admitted without measuring anything.
func TestAdmissionCountsTerminatedRentalsWritesAsFreed(t *testing.T) {
	t.Parallel()
	d := &fakeDisk{free: 100 * gib, used: map[string]uint64{}}
	l := d.limits(0, 0, 0)
	for _, id := range []string{"a", "b"} {
		if _, err := l.Reserve(&runtime.InstanceSpec{ID: id, Resources: runtime.Resources{DiskGB: 40}}); err != nil {
			t.Fatal(err)
		}
	}
	d.used["a"] = 30 * gib
	d.free -= 30 * gib
	watchOnce(t, d, l)
	d.free += d.used["a"]
	delete(d.used, "a")
	l.Release("a")
	before := d.measured.Load()
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "c", Resources: runtime.Resources{DiskGB: 60}}); err != nil {
		t.Fatalf("60 GiB beside b's 40 on 100 GiB, a terminated: %v", err)
	}
	if n := d.measured.Load() - before; n != 0 {
		t.Errorf("the start measured %d writable layers, want none (the watcher's pass and the terminate tell all)", n)
	}
}

// A start the latest measurement refuses is measured afresh, once: it is
// admitted when what rentals wrote since makes room, and refused only
// when a fresh measurement refuses it.
func TestAdmissionRemeasuresBeforeRefusing(t *testing.T) {
	t.Parallel()
	d := &fakeDisk{free: 100 * gib, used: map[string]uint64{}}
	l := d.limits(0, 0, 0)
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "a", Resources: runtime.Resources{DiskGB: 40}}); err != nil {
		t.Fatal(err)
	}
	watchOnce(t, d, l)
	// a writes 30 GiB: free space says 70, the measurement 0 written.
	d.used["a"] = 30 * gib
	d.free -= 30 * gib
	before := d.measured.Load()
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "b", Resources: runtime.Resources{DiskGB: 60}}); err != nil {
		t.Fatalf("60 GiB beside a's 40 on 100 GiB, 30 of it written by a: %v", err)
	}
	if n := d.measured.Load() - before; n != 1 {
		t.Errorf("the start measured %d writable layers, want 1 (a, afresh)", n)
	}
	before = d.measured.Load()
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "c", Resources: runtime.Resources{DiskGB: 1}}); !isDiskRefusal(err) {
		t.Fatalf("1 GiB on a disk whose 100 GiB are all promised: %v, want a disk refusal", err)
	}
	if n := d.measured.Load() - before; n != 2 {
		t.Errorf("the refusal measured %d writable layers, want 2 (a and b, once)", n)
	}
}

// A measurement older than measurementMaxAge decides nothing: a start
// after it measures afresh.
func TestAdmissionMeasurementAges(t *testing.T) {
	t.Parallel()
	d := &fakeDisk{free: 100 * gib, used: map[string]uint64{}}
	l := d.limits(0, 0, 0)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	l.now = func() time.Time { return now }
	for _, id := range []string{"a", "b"} {
		if _, err := l.Reserve(&runtime.InstanceSpec{ID: id, Resources: runtime.Resources{DiskGB: 10}}); err != nil {
			t.Fatal(err)
		}
	}
	before := d.measured.Load()
	now = now.Add(measurementMaxAge + time.Second)
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "c", Resources: runtime.Resources{DiskGB: 10}}); err != nil {
		t.Fatal(err)
	}
	if n := d.measured.Load() - before; n != 2 {
		t.Errorf("a start after the measurement aged measured %d writable layers, want 2", n)
	}
}

// Concurrent starts never share out more than the disk allocates: of 60
// asking 1 GiB on 40 GiB, exactly 40 are admitted.
func TestAdmissionConcurrentStartsNeverOvercommit(t *testing.T) {
	t.Parallel()
	d := &fakeDisk{free: 50 * gib, used: map[string]uint64{}}
	l := d.limits(10*gib, 0, 0)
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := l.Reserve(&runtime.InstanceSpec{ID: "r" + strconv.Itoa(i), Resources: runtime.Resources{DiskGB: 1}})
			switch {
			case err == nil:
				admitted.Add(1)
			case !isDiskRefusal(err):
				t.Errorf("start %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if n := admitted.Load(); n != 40 || l.Held() != 40*gib {
		t.Fatalf("admitted %d holding %d GiB, want 40 and 40 GiB", n, l.Held()/gib)
	}
}
