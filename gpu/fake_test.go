package gpu

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
)

// Values the fake GPUs report beyond what dgxa100 implements.
const (
	fakePowerLimitMilliwatts = 400_000
	fakePowerUsageMilliwatts = 123_456
	fakeTemperatureC         = 41
	fakeUtilizationPercent   = 37
	fakeMemoryUsedBytes      = 3 << 30
)

// fakeHost is a dgxa100 (8 × A100-SXM4-40GB) completed with the queries the
// inventory and the health watcher make, and with an event source the test
// feeds.
type fakeHost struct {
	*dgxa100.Server
	events chan nvml.EventData
}

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	h := &fakeHost{Server: dgxa100.New(), events: make(chan nvml.EventData, 16)}
	for _, d := range h.Devices {
		completeDevice(d.(*dgxa100.Device))
	}
	h.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{}, nvml.SUCCESS
	}
	h.EventSetFreeFunc = func(nvml.EventSet) nvml.Return { return nvml.SUCCESS }
	// Wait behaves as NVML's does: an event if one comes within the
	// timeout, ERROR_TIMEOUT otherwise. The timeout is shortened so that a
	// cancelled watcher ends quickly.
	h.EventSetWaitFunc = func(_ nvml.EventSet, timeoutMs uint32) (nvml.EventData, nvml.Return) {
		select {
		case e := <-h.events:
			return e, nvml.SUCCESS
		case <-time.After(min(time.Duration(timeoutMs)*time.Millisecond, 20*time.Millisecond)):
			return nvml.EventData{}, nvml.ERROR_TIMEOUT
		}
	}
	return h
}

func completeDevice(d *dgxa100.Device) {
	d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		p := nvml.PciInfo{PciDeviceId: d.Config.PciDeviceId}
		for i := range len(d.PciBusID) {
			p.BusId[i] = int8(d.PciBusID[i])
		}
		return p, nvml.SUCCESS
	}
	d.GetCurrPcieLinkGenerationFunc = func() (int, nvml.Return) { return 4, nvml.SUCCESS }
	d.GetMaxPcieLinkGenerationFunc = func() (int, nvml.Return) { return 4, nvml.SUCCESS }
	d.GetCurrPcieLinkWidthFunc = func() (int, nvml.Return) { return 8, nvml.SUCCESS }
	d.GetMaxPcieLinkWidthFunc = func() (int, nvml.Return) { return 16, nvml.SUCCESS }
	d.GetPowerManagementLimitFunc = func() (uint32, nvml.Return) { return fakePowerLimitMilliwatts, nvml.SUCCESS }
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		return nvml.Utilization{Gpu: fakeUtilizationPercent, Memory: 5}, nvml.SUCCESS
	}
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		m := d.MemoryInfo
		m.Used = fakeMemoryUsedBytes
		m.Free = m.Total - m.Used
		return m, nvml.SUCCESS
	}
	d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return fakeTemperatureC, nvml.SUCCESS }
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return fakePowerUsageMilliwatts, nvml.SUCCESS }
	d.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
		return nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError, nvml.SUCCESS
	}
	d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
}

// device returns the fake's i-th GPU for tests that change its behaviour.
func (h *fakeHost) device(i int) *dgxa100.Device { return h.Devices[i].(*dgxa100.Device) }

// xid makes the i-th GPU report an Xid.
func (h *fakeHost) xid(i int, xid uint64) {
	h.events <- nvml.EventData{Device: h.Devices[i], EventType: nvml.EventTypeXidCriticalError, EventData: xid}
}

// open opens an inventory on h and an allocator on it.
func open(t *testing.T, lib nvml.Interface) (*Inventory, *Allocator) {
	t.Helper()
	inv, err := Open(lib, testLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { inv.Close() })
	return inv, NewAllocator(inv)
}

// testLogger sends the package's logs to the test's log, shown on failure.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// recorder is an Publisher that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	events []Event
	added  chan struct{}
}

func newRecorder() *recorder { return &recorder{added: make(chan struct{}, 64)} }

func (r *recorder) Publish(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	select {
	case r.added <- struct{}{}:
	default:
	}
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// waitFor waits until n events were published, failing the test if they do
// not come within a generous bound (a hang, not a timing assertion).
func (r *recorder) waitFor(t *testing.T, n int) []Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if got := r.all(); len(got) >= n {
			return got
		}
		select {
		case <-r.added:
		case <-ctx.Done():
			t.Fatalf("waited for %d events, got %v", n, r.all())
		}
	}
}
