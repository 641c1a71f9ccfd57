package disk

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

const gib = 1 << 30

// fakeDisk is a disk whose free space and rentals' usage the test sets.
// measured counts the writable layers the Limits it builds measured.
type fakeDisk struct {
	free     uint64
	used     map[string]uint64
	measured atomic.Int64
}

func (f *fakeDisk) limits(reserve, def uint64, gpus int) *Limits {
	return &Limits{
		Path: "/var/lib/containerd", ReserveBytes: reserve, Default: def, GPUs: gpus,
		Free: func(string) (uint64, error) { return f.free, nil },
		Used: func(_ context.Context, id string) (uint64, error) {
			f.measured.Add(1)
			return f.used[id], nil
		},
	}
}

func limitOf(t *testing.T, labels map[string]string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(labels[runtime.LabelDiskLimitBytes], 10, 64)
	if err != nil {
		t.Fatalf("labels %v: %v", labels, err)
	}
	return n
}

func isDiskRefusal(err error) bool {
	var fe *FullError
	return errors.As(err, &fe) && fe.ErrorField() == "disk" && errdefs.IsResourceExhausted(err)
}

// Limits asked for are recorded; the sum of limits must fit in free space
// less the reserve; what rentals already wrote counts back (up to their
// limit), and a released limit frees its room.
func TestLimitsAdmission(t *testing.T) {
	t.Parallel()
	d := &fakeDisk{free: 120 * gib, used: map[string]uint64{}}
	l := d.limits(20*gib, 0, 8)
	a := &runtime.InstanceSpec{ID: "a", Resources: runtime.Resources{DiskGB: 60}}
	labels, err := l.Reserve(a)
	if err != nil {
		t.Fatal(err)
	}
	if got := limitOf(t, labels); got != 60*gib {
		t.Fatalf("limit %d, want 60 GiB", got)
	}
	// a wrote 30 GiB: free space fell by that, but its limit covers it.
	d.free -= 30 * gib
	d.used["a"] = 30 * gib
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "b", Resources: runtime.Resources{DiskGB: 41}}); !isDiskRefusal(err) {
		t.Fatalf("41 GiB with 40 left: %v, want a disk refusal", err)
	}
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "b", Resources: runtime.Resources{DiskGB: 40}}); err != nil {
		t.Fatalf("40 GiB with 40 left: %v", err)
	}
	// A rental writing past its limit (before the watcher stops it)
	// counts its limit only: what it wrote beyond is the host's loss.
	d.used["a"] = 90 * gib
	d.free = 30 * gib
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "c", Resources: runtime.Resources{DiskGB: 1}}); !isDiskRefusal(err) {
		t.Fatalf("nothing left: %v, want a disk refusal", err)
	}
	l.Release("b")
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "c", Resources: runtime.Resources{DiskGB: 11}}); !isDiskRefusal(err) {
		t.Fatalf("11 GiB with 10 left: %v, want a disk refusal", err)
	}
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "c", Resources: runtime.Resources{DiskGB: 10}}); err != nil {
		t.Fatalf("after b's release: %v", err)
	}
	if got := l.Held(); got != 70*gib {
		t.Fatalf("held %d GiB, want 70", got/gib)
	}
}

// A rental naming no limit gets RENTAL_DISK_GB, else its GPU share of what
// the disk allocates; a CPU rental one GPU's share, or an eighth on a host
// without GPUs.
func TestLimitsDefault(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		def      uint64
		hostGPUs int
		gpus     int
		want     uint64
	}{
		{"RENTAL_DISK_GB", 50 * gib, 8, 2, 50 * gib},
		{"two of eight GPUs", 0, 8, 2, 200 * gib},
		{"CPU rental on a GPU host", 0, 8, 0, 100 * gib},
		{"CPU rental on a CPU host", 0, 0, 0, 100 * gib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := &fakeDisk{free: 820 * gib}
			l := d.limits(20*gib, tc.def, tc.hostGPUs)
			spec := &runtime.InstanceSpec{ID: "x"}
			for i := range tc.gpus {
				spec.GPUs = append(spec.GPUs, runtime.GPU{Index: i})
			}
			labels, err := l.Reserve(spec)
			if err != nil {
				t.Fatal(err)
			}
			if got := limitOf(t, labels); got != tc.want {
				t.Fatalf("limit %d GiB, want %d", got/gib, tc.want/gib)
			}
		})
	}
}

// Below the reserve every start is refused; limits are rebuilt from
// labels, and a bad label is an error rather than a silent zero.
func TestLimitsReserveAndRestore(t *testing.T) {
	t.Parallel()
	d := &fakeDisk{free: 10 * gib}
	l := d.limits(20*gib, 0, 0)
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "a", Resources: runtime.Resources{DiskGB: 1}}); !isDiskRefusal(err) {
		t.Fatalf("below the reserve: %v", err)
	}
	if err := l.Restore("old", map[string]string{runtime.LabelDiskLimitBytes: strconv.Itoa(5 * gib)}); err != nil {
		t.Fatal(err)
	}
	if err := l.Restore("bad", map[string]string{runtime.LabelDiskLimitBytes: "lots"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad label: %v", err)
	}
	if err := l.Restore("none", map[string]string{}); err != nil {
		t.Fatal(err)
	}
	h := l.Holdings()
	if len(h) != 1 || limitOf(t, h["old"]) != 5*gib {
		t.Fatalf("holdings %v", h)
	}
	if !l.Records(runtime.LabelDiskLimitBytes) || l.Records(runtime.LabelExitReason) {
		t.Fatal("Records")
	}
}

// Volumes on the same disk promise space too: what they have not written
// yet is not the rentals' to take, and what rentals have not written of
// their limits is not the volumes'.
func TestLimitsShareTheDiskWithVolumes(t *testing.T) {
	d := &fakeDisk{free: 100 * gib, used: map[string]uint64{}}
	l := d.limits(10*gib, 0, 0)
	promised := uint64(30 * gib)
	l.Promised = func() uint64 { return promised }
	alloc, _, err := l.Allocatable(context.Background(), "")
	if err != nil || alloc != 60*gib {
		t.Fatalf("Allocatable = %d GiB, %v; want 60 GiB (100 free - 30 promised to volumes - 10 reserve)", alloc/gib, err)
	}
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "big", Resources: runtime.Resources{DiskGB: 61}}); !isDiskRefusal(err) {
		t.Fatalf("a 61 GiB limit beside 30 GiB promised to volumes: %v, want a disk refusal", err)
	}
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "a", Resources: runtime.Resources{DiskGB: 40}}); err != nil {
		t.Fatal(err)
	}
	d.used["a"] = 15 * gib
	if got := l.Unwritten(context.Background()); got != 25*gib {
		t.Errorf("Unwritten = %d GiB, want 25 (a 40 GiB limit, 15 written)", got/gib)
	}
	promised = 0
	if alloc, _, _ := l.Allocatable(context.Background(), ""); alloc != 105*gib {
		t.Errorf("Allocatable with nothing promised = %d GiB, want 105 (100 free + 15 written by a - 10)", alloc/gib)
	}
}

// Free space moves between starts (images, logs): the last default share
// of the disk gets what is left when that is most of a share, and is
// refused when it is not.
func TestLimitsLastShareTakesWhatIsLeft(t *testing.T) {
	d := &fakeDisk{free: 80 * gib, used: map[string]uint64{}}
	l := d.limits(0, 0, 0)
	for i := range CPURentalDivisor - 1 {
		if _, err := l.Reserve(&runtime.InstanceSpec{ID: "r" + strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	d.free = 80*gib - 1<<20 // a little less free than when the others got theirs
	labels, err := l.Reserve(&runtime.InstanceSpec{ID: "last"})
	if err != nil {
		t.Fatalf("the eighth default share after free space shrank by 1 MiB: %v", err)
	}
	if got, want := limitOf(t, labels), uint64(10*gib-1<<20); got != want {
		t.Errorf("the eighth share got %d bytes, want what is left, %d", got, want)
	}
	l.Release("last")
	d.free = 74 * gib // 4 GiB left: less than half a 9.25 GiB share
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "last"}); !isDiskRefusal(err) {
		t.Errorf("a share with 4 GiB left: %v, want a disk refusal", err)
	}
	if _, err := l.Reserve(&runtime.InstanceSpec{ID: "asked", Resources: runtime.Resources{DiskGB: 5}}); !isDiskRefusal(err) {
		t.Errorf("an asked-for 5 GiB with 4 GiB left: %v, want a disk refusal (only shares shrink)", err)
	}
}
