package gpu

import (
	"context"
	"errors"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu/gpumock"
)

func openMIG(t *testing.T, rentals bool) (*gpumock.Machine, *Inventory, *Allocator) {
	t.Helper()
	m, err := gpumock.New(gpumock.DGXH100MIG)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := Open(m, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	if rentals {
		inv.EnableMIGRentals()
	}
	return m, inv, NewAllocator(inv)
}

// TestMIGDevicesListed reads the mock's MIG devices as units with their
// profile, memory and parent GPU.
func TestMIGDevicesListed(t *testing.T) {
	t.Parallel()
	_, inv, _ := openMIG(t, true)
	migs := inv.MIGDevices()
	if len(migs) != 11 {
		t.Fatalf("MIG devices = %d, want 11: %+v", len(migs), migs)
	}
	gpus := inv.GPUs()
	profiles := map[string]int{}
	for _, m := range migs {
		profiles[m.Profile]++
		if !IsMIGUUID(m.UUID) {
			t.Errorf("MIG UUID %q", m.UUID)
		}
		if m.ParentUUID != gpus[m.ParentIndex].UUID || gpus[m.ParentIndex].MIGMode != MIGEnabled {
			t.Errorf("MIG %s parent %d %s, GPU is %+v", m.UUID, m.ParentIndex, m.ParentUUID, gpus[m.ParentIndex])
		}
		if !m.Healthy || m.HeldBy != "" || m.MemoryTotalMiB == 0 || m.GPUInstanceID == 0 {
			t.Errorf("MIG %+v", m)
		}
	}
	if profiles["1g.10gb"] != 9 || profiles["2g.20gb"] != 1 || profiles["3g.40gb"] != 1 {
		t.Errorf("profiles = %v", profiles)
	}
	if migs[0].Profile != "3g.40gb" || migs[0].MemoryTotalMiB != 40192 || migs[0].ParentIndex != 0 {
		t.Errorf("first MIG device = %+v", migs[0])
	}
}

// TestMIGAllocatedByProfile reserves MIG devices by profile and by UUID,
// is refused when none of a profile is free, frees them on release and
// never rents a GPU in MIG mode whole.
func TestMIGAllocatedByProfile(t *testing.T) {
	t.Parallel()
	_, inv, a := openMIG(t, true)
	got, err := a.Reserve("r1", Request{MIGProfile: "3g.40gb"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].MIGProfile != "3g.40gb" || got[0].Index != 0 || !IsMIGUUID(got[0].UUID) {
		t.Fatalf("reserved %+v", got)
	}
	if again, err := a.Reserve("r1", Request{MIGProfile: "3g.40gb"}); err != nil || again[0].UUID != got[0].UUID {
		t.Fatalf("retried reservation = %+v, %v", again, err)
	}
	_, err = a.Reserve("r2", Request{MIGProfile: "3g.40gb"})
	if !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second 3g.40gb: %v, want Conflict", err)
	}
	if _, err := a.Reserve("r2", Request{IDs: []string{got[0].UUID}}); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("held MIG by UUID: %v, want Conflict", err)
	}
	if _, err := a.Reserve("r2", Request{MIGProfile: "7g.80gb"}); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("absent profile: %v, want Conflict", err)
	}
	if _, err := a.Reserve("r2", Request{MIGProfile: "big"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad profile: %v, want InvalidArgument", err)
	}
	if h := holderOfMIG(inv, got[0].UUID); h != "r1" {
		t.Errorf("held_by = %q", h)
	}

	// 1g.10gb goes to the GPU with fewer free slices (GPU 0, two of them),
	// keeping GPU 1's seven together.
	small, err := a.Reserve("r3", Request{MIGProfile: "1g.10gb"})
	if err != nil || small[0].Index != 0 {
		t.Fatalf("1g.10gb = %+v, %v", small, err)
	}
	// Whole GPUs: the two in MIG mode are never among them.
	if free, total := a.Counts(); free != 6 || total != 8 {
		t.Errorf("counts = %d free of %d", free, total)
	}
	if _, err := a.Reserve("r4", Request{IDs: []string{"0"}}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("GPU 0 whole: %v, want Conflict", err)
	}

	a.Release("r1")
	if h := holderOfMIG(inv, got[0].UUID); h != "" {
		t.Errorf("held_by after release = %q", h)
	}
	if again, err := a.Reserve("r2", Request{MIGProfile: "3g.40gb"}); err != nil || again[0].UUID != got[0].UUID {
		t.Fatalf("after release: %+v, %v", again, err)
	}

	// Restored from labels by UUID, as after a restart.
	_, inv2, a2 := openMIG(t, true)
	if err := a2.Restore("r2", []string{got[0].UUID}); err != nil {
		t.Fatal(err)
	}
	if _, err := a2.Reserve("r5", Request{MIGProfile: "3g.40gb"}); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("after restore: %v, want Conflict", err)
	}
	if h := holderOfMIG(inv2, got[0].UUID); h != "r2" {
		t.Errorf("restored held_by = %q", h)
	}
}

// TestMIGRentalsOff keeps MIG devices out, as before MIG_RENTALS.
func TestMIGRentalsOff(t *testing.T) {
	t.Parallel()
	_, inv, a := openMIG(t, false)
	if n := len(inv.MIGDevices()); n != 0 {
		t.Errorf("MIG devices listed without MIG rentals: %d", n)
	}
	if _, err := a.Reserve("r1", Request{MIGProfile: "1g.10gb"}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("MIG profile without MIG rentals: %v, want Conflict", err)
	}
	if free, _ := a.Counts(); free != 6 {
		t.Errorf("free whole GPUs = %d, want 6", free)
	}
}

// TestMIGFaultToldToHolder reports an Xid on a GPU in MIG mode to the
// holder of its MIG device, naming the MIG device.
func TestMIGFaultToldToHolder(t *testing.T) {
	t.Parallel()
	m, inv, a := openMIG(t, true)
	got, err := a.Reserve("r1", Request{MIGProfile: "2g.20gb"})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = inv.WatchHealth(ctx, rec) }()
	m.InjectXid(0, 79)
	for _, e := range rec.waitFor(t, 2) {
		if e.Type != EventFault {
			continue
		}
		if e.InstanceID != "r1" || e.GPU != got[0].UUID || e.Fault == nil || e.Fault.Xid != 79 || !e.Fault.Benched {
			t.Fatalf("fault event = %+v", e)
		}
		if migs := inv.MIGDevices(); migs[1].Healthy {
			t.Errorf("MIG device on a benched GPU is healthy: %+v", migs[1])
		}
		return
	}
	t.Fatalf("no instance.gpu_fault in %+v", rec.all())
}

func holderOfMIG(inv *Inventory, uuid string) string {
	for _, m := range inv.MIGDevices() {
		if m.UUID == uuid {
			return m.HeldBy
		}
	}
	return "?"
}

// TestMIGFaultInOneInstance tells an Xid NVML reports inside one GPU
// instance only to the holder of that MIG device; one about the whole GPU
// reaches every MIG device's holder.
func TestMIGFaultInOneInstance(t *testing.T) {
	t.Parallel()
	m, inv, a := openMIG(t, true)
	var ids []string
	for _, id := range []string{"r1", "r2"} {
		got, err := a.Reserve(id, Request{IDs: []string{m.MIGDevices()[4+len(ids)].UUID}}) // on GPU 1
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got[0].UUID)
	}
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = inv.WatchHealth(ctx, rec) }()
	m.InjectMIGXid(1, m.MIGDevices()[4].GPUInstance, 13)
	m.InjectXid(1, 31)
	// Events are handled in order: once r2 heard of the second Xid, it
	// would have heard of the first too.
	for len(inv.Faults("r2")) == 0 {
		rec.waitFor(t, len(rec.all())+1)
	}
	if f := inv.Faults("r1"); len(f) != 2 || f[0].Xid != 13 || f[0].GPU != ids[0] || f[1].Xid != 31 {
		t.Errorf("r1's faults = %+v, want Xid 13 then 31 on %s", f, ids[0])
	}
	if f := inv.Faults("r2"); len(f) != 1 || f[0].Xid != 31 || f[0].GPU != ids[1] {
		t.Errorf("r2's faults = %+v, want only the whole GPU's Xid 31 on %s", f, ids[1])
	}
}
