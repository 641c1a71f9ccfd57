package usage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/host-agent/host-agent/runtime"
)

// fakeSampler answers the samples set for each rental.
type fakeSampler struct {
	mu      sync.Mutex
	samples map[string]Sample
}

func (f *fakeSampler) set(id string, s Sample) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.samples[id] = s
}

func (f *fakeSampler) SampleUsage(_ context.Context, id string) (Sample, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.samples[id]
	if !ok {
		return Sample{}, errdefs.ErrNotFound
	}
	return s, nil
}

type fakeDisk map[string]uint64

func (f fakeDisk) DiskUsed(_ context.Context, id string) (uint64, error) {
	n, ok := f[id]
	if !ok {
		return 0, errors.New("unknown")
	}
	return n, nil
}

var created = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func running(id string) runtime.Instance {
	return runtime.Instance{ID: id, Status: runtime.StatusRunning, CreatedAt: created, StartedAt: created}
}

// The figures only grow: across a counter that starts again (a new
// cgroup or veth), a failed reading, a memory reading lower than the
// peak, and a new Meter on the same directory (the agent's restart).
func TestMeterMonotonicAcrossResetsAndRestarts(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "usage")
	src := &fakeSampler{samples: map[string]Sample{}}
	m, err := NewMeter(Options{Dir: dir, Sampler: src, Disk: fakeDisk{"a": 500}})
	if err != nil {
		t.Fatal(err)
	}
	inst := running("a")
	src.set("a", Sample{CPUNanos: 2e9, MemoryBytes: 100, Net: true, NetRxBytes: 10, NetTxBytes: 20})
	u := m.Observe(context.Background(), inst)
	if u != (Usage{CPUSeconds: 2, MemoryMaxBytes: 100, NetRxBytes: 10, NetTxBytes: 20, DiskUsedBytes: 500}) {
		t.Fatalf("first reading: %+v", u)
	}
	// The sources start again from zero (containerd restarted the task's
	// cgroup, a new veth): what they counted is kept.
	src.set("a", Sample{CPUNanos: 1e9, MemoryBytes: 50, Net: true, NetRxBytes: 5, NetTxBytes: 1})
	u = m.Observe(context.Background(), inst)
	if u.CPUSeconds != 3 || u.NetRxBytes != 15 || u.NetTxBytes != 21 || u.MemoryMaxBytes != 100 {
		t.Fatalf("after the sources started over: %+v", u)
	}
	// A new Meter reads back what the old one kept.
	m2, err := NewMeter(Options{Dir: dir, Sampler: src})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := m2.Last("a"); !ok || got != u {
		t.Fatalf("after a restart: %+v, %v; want %+v", got, ok, u)
	}
	src.set("a", Sample{CPUNanos: 1.5e9, MemoryPeakBytes: 300, Net: true, NetRxBytes: 6, NetTxBytes: 2})
	u = m2.Observe(context.Background(), inst)
	if u.CPUSeconds != 3.5 || u.NetRxBytes != 16 || u.NetTxBytes != 22 || u.MemoryMaxBytes != 300 || u.DiskUsedBytes != 500 {
		t.Fatalf("after a restart and another reading: %+v", u)
	}
	// A failed reading (the task is gone) keeps the figures.
	src.set("a", Sample{})
	delete(src.samples, "a")
	if got := m2.Observe(context.Background(), inst); got != u {
		t.Fatalf("after a failed reading: %+v, want %+v", got, u)
	}
	// An exited rental is not read: its figures are what was kept.
	exited := inst
	exited.Status = runtime.StatusExited
	src.set("a", Sample{CPUNanos: 1})
	if got := m2.Observe(context.Background(), exited); got != u {
		t.Fatalf("an exited rental: %+v, want %+v", got, u)
	}
	// Terminated: forgotten, on disk too.
	m2.Forget("a")
	if _, ok := m2.Last("a"); ok {
		t.Fatal("Forget kept the rental")
	}
	if _, err := os.Stat(filepath.Join(dir, "a.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record left on disk: %v", err)
	}
}

// A rental of the same ID created later starts from zero.
func TestMeterNewRentalUnderSameID(t *testing.T) {
	t.Parallel()
	src := &fakeSampler{samples: map[string]Sample{"a": {CPUNanos: 5e9}}}
	m, err := NewMeter(Options{Dir: t.TempDir(), Sampler: src})
	if err != nil {
		t.Fatal(err)
	}
	m.Observe(context.Background(), running("a"))
	later := running("a")
	later.CreatedAt = created.Add(time.Hour)
	src.set("a", Sample{CPUNanos: 1e9})
	if u := m.Observe(context.Background(), later); u.CPUSeconds != 1 {
		t.Fatalf("a new rental under the same ID: %+v", u)
	}
}

// GPU time is the GPUs held times the seconds run, to the exit.
func TestMeterGPUSeconds(t *testing.T) {
	t.Parallel()
	now := created.Add(100 * time.Second)
	m, err := NewMeter(Options{Dir: t.TempDir(), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	inst := running("g")
	inst.GPUs = []runtime.GPU{{UUID: "GPU-1"}, {UUID: "GPU-2"}}
	if u := m.Observe(context.Background(), inst); u.GPUSeconds != 200 {
		t.Fatalf("2 GPUs for 100 s: %+v", u)
	}
	inst.Status, inst.FinishedAt = runtime.StatusExited, created.Add(150*time.Second)
	now = created.Add(time.Hour)
	if u := m.Observe(context.Background(), inst); u.GPUSeconds != 300 {
		t.Fatalf("2 GPUs until the exit at 150 s: %+v", u)
	}
}

// Prune forgets the rentals gone while the agent was away, and their
// series leave the metrics.
func TestMeterPruneAndCollector(t *testing.T) {
	t.Parallel()
	src := &fakeSampler{samples: map[string]Sample{"a": {CPUNanos: 1e9, Net: true, NetTxBytes: 7}, "b": {CPUNanos: 2e9}}}
	m, err := NewMeter(Options{Dir: t.TempDir(), Sampler: src})
	if err != nil {
		t.Fatal(err)
	}
	m.Observe(context.Background(), running("a"))
	m.Observe(context.Background(), running("b"))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collector())
	if got := series(t, reg, "host_agent_instance_net_tx_bytes_total"); got != "a=7 b=0" {
		t.Fatalf("net_tx series: %s", got)
	}
	m.Prune(map[string]bool{"b": true})
	if _, ok := m.Last("a"); ok {
		t.Fatal("Prune kept a")
	}
	if got := series(t, reg, "host_agent_instance_cpu_seconds_total"); got != "b=2" {
		t.Fatalf("cpu series after the prune: %s", got)
	}
}

// series lists name's series in reg as "instance=value ...", sorted.
func series(t *testing.T, reg *prometheus.Registry, name string) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			out = append(out, fmt.Sprintf("%s=%g", m.Label[0].GetValue(), v))
		}
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}
