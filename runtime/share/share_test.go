package share

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

func gpus(n int) []runtime.GPU {
	out := make([]runtime.GPU, n)
	for i := range out {
		out[i] = runtime.GPU{Index: i, UUID: fmt.Sprintf("GPU-%d", i)}
	}
	return out
}

func TestLimitsFollowTheGPUShare(t *testing.T) {
	t.Parallel()
	eightGPUs := Options{MemoryMB: 64000, CPUs: 32, GPUs: 8}
	for _, tc := range []struct {
		name string
		opts Options
		spec runtime.InstanceSpec
		want runtime.Resources
	}{
		{"two of eight GPUs: a quarter", eightGPUs, runtime.InstanceSpec{GPUs: gpus(2)},
			runtime.Resources{MemoryMB: 16000, CPUs: 8, Pids: runtime.DefaultPids, ShmMB: 8000}},
		{"every GPU: the whole host", eightGPUs, runtime.InstanceSpec{GPUs: gpus(8)},
			runtime.Resources{MemoryMB: 64000, CPUs: 32, Pids: runtime.DefaultPids, ShmMB: 32000}},
		{"CPU rental: one GPU's share, runtime's shm", eightGPUs, runtime.InstanceSpec{},
			runtime.Resources{MemoryMB: 8000, CPUs: 4, Pids: runtime.DefaultPids}},
		{"CPU rental, configured", Options{MemoryMB: 64000, CPUs: 32, GPUs: 8, CPURentalMemoryMB: 2048, CPURentalCPUs: 1.5},
			runtime.InstanceSpec{}, runtime.Resources{MemoryMB: 2048, CPUs: 1.5, Pids: runtime.DefaultPids}},
		{"CPU rental on a host without GPUs: an eighth", Options{MemoryMB: 16000, CPUs: 2},
			runtime.InstanceSpec{}, runtime.Resources{MemoryMB: 2000, CPUs: 0.25, Pids: runtime.DefaultPids}},
		{"named limits win", Options{MemoryMB: 64000, CPUs: 32, GPUs: 8, Pids: 100},
			runtime.InstanceSpec{GPUs: gpus(1), Resources: runtime.Resources{MemoryMB: 1000, Pids: 50, ShmMB: 10}},
			runtime.Resources{MemoryMB: 1000, CPUs: 4, Pids: 50, ShmMB: 10}},
		{"configured pids and shm fraction", Options{MemoryMB: 8000, CPUs: 8, GPUs: 1, Pids: 100, ShmFraction: 0.25},
			runtime.InstanceSpec{GPUs: gpus(1)}, runtime.Resources{MemoryMB: 8000, CPUs: 8, Pids: 100, ShmMB: 2000}},
		{"shm fraction off", Options{MemoryMB: 8000, CPUs: 8, GPUs: 1, ShmFraction: -1},
			runtime.InstanceSpec{GPUs: gpus(1)}, runtime.Resources{MemoryMB: 8000, CPUs: 8, Pids: runtime.DefaultPids}},
		{"three of eight CPUs rounded down", Options{MemoryMB: 8000, CPUs: 1, GPUs: 3},
			runtime.InstanceSpec{GPUs: gpus(1)}, runtime.Resources{MemoryMB: 2666, CPUs: 0.33, Pids: runtime.DefaultPids, ShmMB: 1333}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := New(tc.opts).Limits(tc.spec); got != tc.want {
				t.Errorf("Limits = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestReserveRefusesOversubscription(t *testing.T) {
	t.Parallel()
	r := New(Options{MemoryMB: 8000, CPUs: 8, GPUs: 4})
	a := runtime.InstanceSpec{ID: "a", GPUs: gpus(2)}
	labels, err := r.Reserve(&a)
	if err != nil {
		t.Fatal(err)
	}
	if a.Limits.MemoryMB != 4000 || labels[LabelMemoryMB] != "4000" || labels[LabelCPUs] != "4" {
		t.Fatalf("limits %+v, labels %v", a.Limits, labels)
	}
	big := runtime.InstanceSpec{ID: "big", Resources: runtime.Resources{MemoryMB: 4001}}
	_, err = r.Reserve(&big)
	var ae *AdmissionError
	if !errors.As(err, &ae) || ae.ErrorField() != "resources" || !errdefs.IsResourceExhausted(err) {
		t.Fatalf("oversubscribing: %v", err)
	}
	if big.Limits != (runtime.Resources{}) {
		t.Errorf("refused spec got limits %+v", big.Limits)
	}
	fits := runtime.InstanceSpec{ID: "fits", Resources: runtime.Resources{MemoryMB: 4000}}
	if _, err := r.Reserve(&fits); err != nil {
		t.Fatal(err)
	}
	if u := r.Usage(); u.AllocatedMemoryMB != 8000 || u.Instances != 2 || u.AllocatableMemoryMB != 8000 {
		t.Errorf("usage %+v", u)
	}
	r.Release("a")
	if _, err := r.Reserve(&big); err == nil {
		t.Error("4001 MiB fit in 4000")
	}
	if u := r.Usage(); u.AllocatedMemoryMB != 4000 {
		t.Errorf("after release: %+v", u)
	}
}

// Many starts race for the last memory: exactly as many as fit get in.
func TestConcurrentReservesNeverOversubscribe(t *testing.T) {
	t.Parallel()
	r := New(Options{MemoryMB: 10000, CPUs: 8})
	var ok atomic.Int32
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			spec := runtime.InstanceSpec{ID: fmt.Sprint("i", i), Resources: runtime.Resources{MemoryMB: 1000}}
			if _, err := r.Reserve(&spec); err == nil {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 10 || r.Usage().AllocatedMemoryMB != 10000 {
		t.Errorf("%d starts admitted, usage %+v", ok.Load(), r.Usage())
	}
}

func TestRestoreRebuildsFromLabels(t *testing.T) {
	t.Parallel()
	r := New(Options{MemoryMB: 8000, CPUs: 8})
	a := runtime.InstanceSpec{ID: "a", Resources: runtime.Resources{MemoryMB: 3000, CPUs: 1.5}}
	labels, err := r.Reserve(&a)
	if err != nil {
		t.Fatal(err)
	}
	again := New(Options{MemoryMB: 8000, CPUs: 8})
	if err := again.Restore("a", labels); err != nil {
		t.Fatal(err)
	}
	if err := again.Restore("old", map[string]string{"unrelated": "x"}); err != nil {
		t.Fatal(err)
	}
	if err := again.Restore("bad", map[string]string{LabelMemoryMB: "x", LabelCPUs: "1"}); err == nil {
		t.Error("bad label restored")
	}
	if got, want := again.Holdings(), r.Holdings(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("restored %v, want %v", got, want)
	}
	if u := again.Usage(); u.AllocatedMemoryMB != 3000 || u.AllocatedCPUs != 1.5 {
		t.Errorf("usage %+v", u)
	}
	for k := range labels {
		if !again.Records(k) {
			t.Errorf("Records(%q) = false", k)
		}
	}
	if again.Records(runtime.LabelGPUs) {
		t.Error("records the GPUs' label")
	}
}

func TestAllocatable(t *testing.T) {
	t.Parallel()
	if m, c, err := Allocatable(16000, 8, 2000, 1); err != nil || m != 14000 || c != 7 {
		t.Errorf("= %d %g %v", m, c, err)
	}
	if _, _, err := Allocatable(1000, 8, 2000, 1); err == nil {
		t.Error("nothing left, no error")
	}
	if _, _, err := Allocatable(16000, 2, 0, 2); err == nil {
		t.Error("no CPUs left, no error")
	}
	if mb, err := HostMemoryMB("/proc/meminfo"); err != nil || mb <= 0 {
		t.Errorf("HostMemoryMB = %d, %v", mb, err)
	}
}
