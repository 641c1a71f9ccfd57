package agent

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
)

// meteredBackend is a fakeBackend whose rentals' writable layers hold
// what the test says; it counts how often each is measured.
type meteredBackend struct {
	*fakeBackend
	dmu      sync.Mutex
	used     map[string]uint64
	measured map[string]int
}

func (b *meteredBackend) DiskUsed(_ context.Context, id string) (uint64, error) {
	b.dmu.Lock()
	defer b.dmu.Unlock()
	b.measured[id]++
	return b.used[id], nil
}

func (b *meteredBackend) StopWithReason(context.Context, string, string) error { return nil }

func (b *meteredBackend) write(id string, n uint64) (measured int) {
	b.dmu.Lock()
	defer b.dmu.Unlock()
	b.used[id] += n
	return b.measured[id]
}

func (b *meteredBackend) timesMeasured(id string) int {
	b.dmu.Lock()
	defer b.dmu.Unlock()
	return b.measured[id]
}

// The disk watch's passes are what starts are admitted on: after a pass
// measured what a rental wrote, a start needing that space counted back
// is admitted without measuring any rental again.
func TestDiskWatchServesAdmission(t *testing.T) {
	t.Parallel()
	const gib = 1 << 30
	be := &meteredBackend{fakeBackend: &fakeBackend{insts: map[string]runtime.Instance{}},
		used: map[string]uint64{}, measured: map[string]int{}}
	var free atomic.Uint64
	free.Store(100 * gib)
	var admissionMeasured atomic.Int64
	limits := &disk.Limits{Path: t.TempDir(),
		Free: func(string) (uint64, error) { return free.Load(), nil },
		Used: func(ctx context.Context, id string) (uint64, error) {
			admissionMeasured.Add(1)
			return be.DiskUsed(ctx, id)
		}}
	a, err := New(context.Background(), Options{
		Logger: quiet(), Events: NewEvents(16), Inventory: mockInventory(t), Backend: be,
		Reservations: Reservations{DiskLimits: limits, DiskWatchInterval: 100 * time.Millisecond,
			NUMAAlign: true, SysRoot: sysWithOneNode(t)},
		RestoreTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, stop := serve(t, a)
	t.Cleanup(func() {
		_ = stop()
		_ = a.Close()
	})
	start := func(id string, gb int64) error {
		_, err := a.Lifecycle.Start(context.Background(), runtime.InstanceSpec{ID: id, Image: "busybox",
			Resources: runtime.Resources{DiskGB: gb}})
		return err
	}
	for _, id := range []string{"a", "b"} {
		if err := start(id, 40); err != nil {
			t.Fatal(err)
		}
	}
	// a writes 30 GiB: 70 GiB free, 30 of them a's to count back.
	since := be.write("a", 30*gib)
	free.Store(70 * gib)
	// Two passes measured a since: the first one's measurement is in.
	for deadline := time.Now().Add(time.Minute); be.timesMeasured("a") < since+2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the disk watch never measured a")
		}
	}
	before := admissionMeasured.Load()
	if err := start("c", 20); err != nil {
		t.Fatalf("20 GiB beside 80 GiB of limits on 70 GiB free, 30 of it written by a: %v", err)
	}
	if n := admissionMeasured.Load() - before; n != 0 {
		t.Errorf("the start measured %d writable layers; want none, the disk watch's pass measured them", n)
	}
}
