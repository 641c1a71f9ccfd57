package gpu

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/containerd/errdefs"
)

// watch runs WatchHealth until the test ends and checks that it ends cleanly.
func watch(t *testing.T, inv *Inventory, pub Publisher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inv.WatchHealth(ctx, pub) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("WatchHealth: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("WatchHealth did not end when its context was cancelled")
		}
	})
}

func TestHandleEvent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		eventType uint64
		data      uint64
		reason    string // "" if the GPU stays healthy
	}{
		{"xid 13 graphics exception", nvml.EventTypeXidCriticalError, 13, ""},
		{"xid 31 page fault", nvml.EventTypeXidCriticalError, 31, ""},
		{"xid 43 stopped", nvml.EventTypeXidCriticalError, 43, ""},
		{"xid 45 preemptive cleanup", nvml.EventTypeXidCriticalError, 45, ""},
		{"xid 68 video", nvml.EventTypeXidCriticalError, 68, ""},
		{"xid 109 context switch timeout", nvml.EventTypeXidCriticalError, 109, ""},
		{"xid 79 fell off the bus", nvml.EventTypeXidCriticalError, 79, "xid 79"},
		{"xid 48 double-bit", nvml.EventTypeXidCriticalError, 48, "xid 48"},
		// Contained or informational: the tenant's process died, the GPU
		// is fine.
		{"xid 94 contained ECC", nvml.EventTypeXidCriticalError, 94, ""},
		{"xid 63 row remap recorded", nvml.EventTypeXidCriticalError, 63, ""},
		{"xid 999 unknown", nvml.EventTypeXidCriticalError, 999, ""},
		{"xid 74 NVLink", nvml.EventTypeXidCriticalError, 74, "xid 74"},
		{"xid 95 uncontained ECC", nvml.EventTypeXidCriticalError, 95, "xid 95"},
		{"xid 119 GSP timeout", nvml.EventTypeXidCriticalError, 119, "xid 119"},
		{"xid 120 GSP error", nvml.EventTypeXidCriticalError, 120, "xid 120"},
		{"double-bit ECC", nvml.EventTypeDoubleBitEccError, 0, ReasonDoubleBitECC},
		{"single-bit ECC", nvml.EventTypeSingleBitEccError, 0, ""},
	}
	for _, tt := range tests {
		for _, held := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/held=%v", tt.name, held), func(t *testing.T) {
				t.Parallel()
				h := newFakeHost(t)
				inv, a := open(t, h)
				rec := newRecorder()
				inv.pub = rec // what WatchHealth does; this test drives handleEvent alone
				holder := ""
				if held {
					holder = "inst-1"
					if _, err := a.Reserve(holder, Request{IDs: []string{"2"}}); err != nil {
						t.Fatal(err)
					}
				}

				inv.handleEvent(nvml.EventData{Device: h.Devices[2], EventType: tt.eventType, EventData: tt.data})

				g := inv.GPUs()[2]
				var got, faults []Event
				for _, e := range rec.all() {
					if e.Type == EventFault {
						faults = append(faults, e)
					} else {
						got = append(got, e)
					}
				}
				// The holder hears of every Xid and double-bit ECC error
				// on its GPU, benching or not.
				wantFault := held && tt.eventType != nvml.EventTypeSingleBitEccError
				if wantFault != (len(faults) == 1) || len(faults) > 1 ||
					wantFault && (faults[0].InstanceID != holder || faults[0].Fault.Benched != (tt.reason != "")) {
					t.Errorf("instance.gpu_fault events %+v; want one: %v", faults, wantFault)
				}
				if tt.reason == "" {
					if !g.Healthy || len(got) != 0 {
						t.Errorf("GPU %+v, events %v; want it healthy and no event", g, got)
					}
					return
				}
				if g.Healthy || g.UnhealthyReason != tt.reason {
					t.Errorf("GPU healthy=%v reason=%q; want reason %q", g.Healthy, g.UnhealthyReason, tt.reason)
				}
				if len(got) != 1 {
					t.Fatalf("events = %v, want one", got)
				}
				e := got[0]
				if e.Type != EventHealth || e.Status != StatusUnhealthy || e.GPU != g.UUID ||
					e.InstanceID != holder || !strings.Contains(e.Message, g.UUID) ||
					!strings.Contains(e.Message, tt.reason) || !strings.Contains(e.Message, "GPU 2 ") {
					t.Errorf("event = %+v", e)
				}
			})
		}
	}
}

func TestHandleEventUnknownDevice(t *testing.T) {
	t.Parallel()
	inv, _ := open(t, newFakeHost(t))
	rec := newRecorder()
	inv.pub = rec
	stranger := &mock.Device{GetUUIDFunc: func() (string, nvml.Return) { return "GPU-stranger", nvml.SUCCESS }}
	mute := &mock.Device{GetUUIDFunc: func() (string, nvml.Return) { return "", nvml.ERROR_UNKNOWN }}
	for _, dev := range []nvml.Device{nil, stranger, mute} {
		inv.handleEvent(nvml.EventData{Device: dev, EventType: nvml.EventTypeXidCriticalError, EventData: 79})
	}
	for _, g := range inv.GPUs() {
		if !g.Healthy {
			t.Errorf("GPU %d marked unhealthy by an event that is not its own", g.Index)
		}
	}
	if got := rec.all(); len(got) != 0 {
		t.Errorf("events = %v", got)
	}
}

// TestWatchHealth feeds events through the mock's EventSetWait and checks
// their effect on allocation, inventory and subscribers.
func TestWatchHealth(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	inv, a := open(t, h)
	if _, err := a.Reserve("inst-a", Request{IDs: []string{"2"}}); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	watch(t, inv, rec)

	h.xid(3, 13) // the application's fault: GPU 3 stays in service
	h.xid(2, 79) // GPU 2, held by inst-a, fell off the bus
	h.xid(2, 79) // NVML repeats itself; benched once, each told to inst-a
	h.xid(5, 48) // GPU 5, free, has a double-bit error
	var got, faults []Event
	for _, e := range rec.waitFor(t, 4) {
		if e.Type == EventFault {
			faults = append(faults, e)
		} else {
			got = append(got, e)
		}
	}
	if len(faults) != 2 || faults[0].InstanceID != "inst-a" || faults[1].Fault.Xid != 79 || !faults[1].Fault.Benched {
		t.Errorf("instance.gpu_fault events = %+v, want two for inst-a", faults)
	}

	if len(got) != 2 {
		t.Fatalf("events = %+v, want two", got)
	}
	want := []struct{ gpu, instance, reason string }{
		{h.device(2).UUID, "inst-a", "xid 79"},
		{h.device(5).UUID, "", "xid 48"},
	}
	for i, w := range want {
		e := got[i]
		if e.Type != EventHealth || e.Status != StatusUnhealthy || e.GPU != w.gpu ||
			e.InstanceID != w.instance || !strings.Contains(e.Message, w.reason) || !strings.Contains(e.Message, w.gpu) {
			t.Errorf("event %d = %+v, want GPU %s instance %q reason %q", i, e, w.gpu, w.instance, w.reason)
		}
	}

	var unhealthy []int
	for _, g := range inv.GPUs() {
		if !g.Healthy {
			unhealthy = append(unhealthy, g.Index)
		}
	}
	if !slices.Equal(unhealthy, []int{2, 5}) {
		t.Errorf("unhealthy GPUs = %v, want [2 5]", unhealthy)
	}
	// Its holder keeps GPU 2 (the container has it); no one gets GPU 5.
	if held := a.Held("inst-a"); len(held) != 1 || held[0].Index != 2 {
		t.Errorf("inst-a holds %v", held)
	}
	if free, total := a.Counts(); free != 6 || total != 8 {
		t.Errorf("Counts = %d, %d; want 6, 8", free, total)
	}
	if _, err := a.Reserve("x", Request{Count: 7}); !errdefs.IsConflict(err) || err.Error() != "requested 7 GPUs, 6 free" {
		t.Errorf("Reserve of 7: %v", err)
	}
	if _, err := a.Reserve("x", Request{IDs: []string{"5"}}); !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "unhealthy: xid 48") {
		t.Errorf("Reserve of the unhealthy GPU: %v", err)
	}
	ds, err := a.Reserve("x", Request{Count: 6})
	if err != nil || !slices.Equal(indexes(ds), []int{0, 1, 3, 4, 6, 7}) {
		t.Errorf("Reserve of 6 = %v, %v", indexes(ds), err)
	}
}

// TestWatchHealthLostGPU checks that a wait failing with GPU_IS_LOST finds
// the lost GPU by sampling each one.
func TestWatchHealthLostGPU(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	h.device(4).GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
	var lostOnce atomic.Bool
	wait := h.EventSetWaitFunc
	h.EventSetWaitFunc = func(set nvml.EventSet, timeoutMs uint32) (nvml.EventData, nvml.Return) {
		if lostOnce.CompareAndSwap(false, true) {
			return nvml.EventData{}, nvml.ERROR_GPU_IS_LOST
		}
		return wait(set, timeoutMs)
	}
	inv, _ := open(t, h)
	rec := newRecorder()
	watch(t, inv, rec)

	got := rec.waitFor(t, 1)
	if e := got[0]; e.GPU != h.device(4).UUID || !strings.Contains(e.Message, ReasonGPULost) {
		t.Errorf("event = %+v", e)
	}
	if g := inv.GPUs()[4]; g.Healthy || g.UnhealthyReason != ReasonGPULost {
		t.Errorf("GPU 4 = %+v", g)
	}
}

// TestUsageLostGPU checks that sampling a lost GPU takes it out of service
// without failing.
func TestUsageLostGPU(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	h.device(6).GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_GPU_IS_LOST }
	inv, a := open(t, h)
	u, err := inv.Usage("6")
	if err != nil || u.TemperatureC != fakeTemperatureC || u.PowerWatts != 0 {
		t.Errorf("Usage = %+v, %v", u, err)
	}
	if g := inv.GPUs()[6]; g.Healthy || g.UnhealthyReason != ReasonGPULost {
		t.Errorf("GPU 6 = %+v", g)
	}
	if free, _ := a.Counts(); free != 7 {
		t.Errorf("free = %d, want 7", free)
	}
}

func TestWatchHealthRegistration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		register   func(i int) nvml.Return
		supported  uint64
		wantEvents int // gpu.health events from registering
		returns    bool
	}{
		{"none supported by RegisterEvents", func(int) nvml.Return { return nvml.ERROR_NOT_SUPPORTED }, 0, 0, true},
		{"none supported by GetSupportedEventTypes", nil, nvml.EventTypeSingleBitEccError, 0, true},
		{"one lost while registering", func(i int) nvml.Return {
			if i == 1 {
				return nvml.ERROR_GPU_IS_LOST
			}
			return nvml.SUCCESS
		}, 0, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newFakeHost(t)
			for i := range 8 {
				d := h.device(i)
				if tt.register != nil {
					d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return tt.register(i) }
				}
				if tt.supported != 0 {
					d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) { return tt.supported, nvml.SUCCESS }
				}
			}
			inv, _ := open(t, h)
			rec := newRecorder()
			if tt.returns {
				done := make(chan error, 1)
				go func() { done <- inv.WatchHealth(context.Background(), rec) }()
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("WatchHealth: %v", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("WatchHealth keeps waiting with nothing to watch")
				}
				return
			}
			watch(t, inv, rec)
			got := rec.waitFor(t, tt.wantEvents)
			if got[0].GPU != h.device(1).UUID || !strings.Contains(got[0].Message, ReasonGPULost) {
				t.Errorf("event = %+v", got[0])
			}
		})
	}
}

func TestWatchHealthOnce(t *testing.T) {
	t.Parallel()
	inv, _ := open(t, newFakeHost(t))
	rec := newRecorder()
	watch(t, inv, rec)
	// Wait until the first watcher has claimed the inventory.
	for deadline := time.Now().Add(10 * time.Second); ; {
		inv.mu.Lock()
		watching := inv.watching
		inv.mu.Unlock()
		if watching {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("watcher did not start")
		}
		time.Sleep(time.Millisecond)
	}
	if err := inv.WatchHealth(context.Background(), rec); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("second WatchHealth: %v", err)
	}
}

// TestWatchHealthPartialFake checks that a fake without event support ends
// the watcher with an error instead of crashing the agent.
func TestWatchHealthPartialFake(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	h.EventSetCreateFunc = nil
	inv, _ := open(t, h)
	if err := inv.WatchHealth(context.Background(), newRecorder()); !errdefs.IsInternal(err) {
		t.Errorf("WatchHealth on a fake without event sets: %v", err)
	}
}
