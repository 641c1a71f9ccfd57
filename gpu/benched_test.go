package gpu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/containerd/errdefs"
)

// restart is what an agent restart does to the inventory: close it, open
// the same GPUs again, read the health file back.
func restart(t *testing.T, h *fakeHost, inv *Inventory, path string) (*Inventory, *Allocator) {
	t.Helper()
	if err := inv.Close(); err != nil {
		t.Fatal(err)
	}
	inv2, err := Open(h, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := inv2.RememberHealth(path); err != nil {
		t.Fatal(err)
	}
	return inv2, NewAllocator(inv2)
}

// TestBenchedGPUStaysBenchedAfterRestart: a GPU taken out of service by a
// fatal Xid is still out after the agent restarts; one that saw only an
// application Xid is in service.
func TestBenchedGPUStaysBenchedAfterRestart(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	path := filepath.Join(t.TempDir(), "state", HealthFileName)
	inv, _ := open(t, h)
	if err := inv.RememberHealth(path); err != nil {
		t.Fatal(err)
	}
	inv.handleEvent(nvml.EventData{Device: h.Devices[2], EventType: nvml.EventTypeXidCriticalError, EventData: 79})
	inv.handleEvent(nvml.EventData{Device: h.Devices[4], EventType: nvml.EventTypeXidCriticalError, EventData: 13})
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("health file: %v %v", fi, err)
	}

	inv2, a := restart(t, h, inv, path)
	gpus := inv2.GPUs()
	if gpus[2].Healthy || gpus[2].UnhealthyReason != "xid 79" {
		t.Fatalf("GPU 2 after restart: %+v, want benched for xid 79", gpus[2])
	}
	if !gpus[4].Healthy {
		t.Fatalf("GPU 4 (application Xid 13) after restart: %+v, want healthy", gpus[4])
	}
	if _, err := a.Reserve("x", Request{IDs: []string{"2"}}); !errdefs.IsConflict(err) {
		t.Fatalf("Reserve of the benched GPU = %v, want Conflict", err)
	}
	devs, err := a.Reserve("all", Request{Count: 7})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if d.Index == 2 {
			t.Fatalf("the benched GPU was allocated: %v", devs)
		}
	}
	if _, err := a.Reserve("one-more", Request{Count: 1}); !errdefs.IsConflict(err) {
		t.Fatalf("an eighth GPU was allocated: %v", err)
	}
}

// TestRememberHealthRefusesACorruptFile: a health file that cannot be read
// stops the agent rather than forgetting what was benched.
func TestRememberHealthRefusesACorruptFile(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	inv, _ := open(t, h)
	path := filepath.Join(t.TempDir(), HealthFileName)
	os.WriteFile(path, []byte("{not json"), 0o600)
	if err := inv.RememberHealth(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("RememberHealth(corrupt) = %v, want an error naming %s", err, path)
	}
}

// TestMemoryFaultsAtStart: GPUs whose NVML memory state says they need a
// reset or service (pending page retirement, a pending or failed row remap,
// uncorrected ECC errors) are never allocated.
func TestMemoryFaultsAtStart(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	dev := func(i int) *dgxa100.Device { return h.Devices[i].(*dgxa100.Device) }
	dev(1).GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return nvml.FEATURE_ENABLED, nvml.SUCCESS }
	dev(3).GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 1, false, true, nvml.SUCCESS }
	dev(5).GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, true, false, nvml.SUCCESS }
	dev(6).GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 2, nvml.SUCCESS }
	// A GPU that supports none of it is healthy.
	dev(7).GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	inv, a := open(t, h)
	want := map[int]string{1: ReasonRetirementPending, 3: ReasonRemapFailure, 5: ReasonRemapPending, 6: ReasonUncorrectedECC}
	for _, g := range inv.GPUs() {
		if reason := want[g.Index]; g.UnhealthyReason != reason || g.Healthy != (reason == "") {
			t.Errorf("GPU %d: healthy=%v reason=%q, want reason %q", g.Index, g.Healthy, g.UnhealthyReason, reason)
		}
	}
	devs, err := a.Reserve("x", Request{Count: 4})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if _, bad := want[d.Index]; bad {
			t.Fatalf("a GPU needing service was allocated: %v", devs)
		}
	}
	if _, err := a.Reserve("y", Request{Count: 1}); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("a fifth GPU was allocated: %v", err)
	}
}
