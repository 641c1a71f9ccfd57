package gpu

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/containerd/errdefs"
)

func indexes(ds []Device) []int {
	out := []int{}
	for _, d := range ds {
		out = append(out, d.Index)
	}
	return out
}

func TestReserveConcurrent(t *testing.T) {
	t.Parallel()
	inv, a := open(t, newFakeHost(t))

	const callers = 50
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		won       = map[string]string{} // GPU UUID -> instance
		conflicts int
	)
	for i := range callers {
		wg.Go(func() {
			id := fmt.Sprintf("inst-%d", i)
			ds, err := a.Reserve(id, Request{Count: 1})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				if len(ds) != 1 {
					t.Errorf("%s got %d GPUs", id, len(ds))
					return
				}
				if prev, ok := won[ds[0].UUID]; ok {
					t.Errorf("GPU %s handed to both %s and %s", ds[0].UUID, prev, id)
				}
				won[ds[0].UUID] = id
			case errdefs.IsConflict(err) && err.Error() == "requested 1 GPU, 0 free":
				conflicts++
			default:
				t.Errorf("%s: unexpected error %v", id, err)
			}
		})
	}
	wg.Wait()
	if len(won) != 8 || conflicts != callers-8 {
		t.Errorf("%d reservations succeeded and %d conflicted, want 8 and %d", len(won), conflicts, callers-8)
	}
	for _, g := range inv.GPUs() {
		if g.HeldBy == "" || g.HeldBy != won[g.UUID] {
			t.Errorf("GPU %d held by %q, want %q", g.Index, g.HeldBy, won[g.UUID])
		}
	}
	if free, total := a.Counts(); free != 0 || total != 8 {
		t.Errorf("Counts = %d, %d; want 0, 8", free, total)
	}
}

func TestReserveCount(t *testing.T) {
	t.Parallel()
	_, a := open(t, newFakeHost(t))

	steps := []struct {
		instance string
		count    int
		want     []int  // indexes handed out
		err      string // exact message of a Conflict
	}{
		{"a", 2, []int{0, 1}, ""},
		{"b", 3, []int{2, 3, 4}, ""},
		{"c", 4, nil, "requested 4 GPUs, 3 free"},
		{"a", 2, []int{0, 1}, ""}, // the same request again: what a holds
		{"a", 3, nil, "instance a already holds GPUs"},
		{"c", 3, []int{5, 6, 7}, ""},
		{"d", 1, nil, "requested 1 GPU, 0 free"},
		{"e", 0, nil, ""}, // no GPUs wanted, none given
	}
	for _, s := range steps {
		got, err := a.Reserve(s.instance, Request{Count: s.count})
		if s.err != "" {
			if !errdefs.IsConflict(err) || !strings.HasPrefix(err.Error(), s.err) {
				t.Errorf("Reserve(%s, %d) error = %v, want Conflict %q", s.instance, s.count, err, s.err)
			}
			continue
		}
		if err != nil || !slices.Equal(indexes(got), append([]int{}, s.want...)) {
			t.Errorf("Reserve(%s, %d) = %v, %v; want %v", s.instance, s.count, indexes(got), err, s.want)
		}
	}

	// Freed GPUs go to the next request, lowest index first.
	a.Release("b")
	a.Release("b") // again: nothing to do
	if got := a.Held("b"); got != nil {
		t.Errorf("Held after Release = %v", got)
	}
	got, err := a.Reserve("d", Request{Count: 2})
	if err != nil || !slices.Equal(indexes(got), []int{2, 3}) {
		t.Errorf("Reserve after Release = %v, %v", indexes(got), err)
	}
	if free, total := a.Counts(); free != 1 || total != 8 {
		t.Errorf("Counts = %d, %d; want 1, 8", free, total)
	}
}

func TestReserveExplicit(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	uuid := func(i int) string { return h.device(i).UUID }

	tests := []struct {
		name    string
		ids     []string
		count   int
		want    []int
		kind    func(error) bool
		message string // must appear in the error
	}{
		{name: "by UUID", ids: []string{uuid(5)}, want: []int{5}},
		{name: "by index", ids: []string{"6", "0"}, want: []int{0, 6}},
		{name: "mixed", ids: []string{uuid(7), "1"}, want: []int{1, 7}},
		{name: "unknown UUID", ids: []string{"1", "GPU-00000000-dead-beef-0000-000000000000"},
			kind: errdefs.IsInvalidArgument, message: `unknown GPU "GPU-00000000-dead-beef-0000-000000000000"`},
		{name: "index out of range", ids: []string{"8"}, kind: errdefs.IsInvalidArgument, message: `unknown GPU "8"`},
		{name: "not an index", ids: []string{"-1"}, kind: errdefs.IsInvalidArgument, message: `unknown GPU "-1"`},
		{name: "named twice", ids: []string{"2", uuid(2)}, kind: errdefs.IsInvalidArgument, message: "named twice"},
		{name: "count and IDs", ids: []string{"2"}, count: 1, kind: errdefs.IsInvalidArgument, message: "not both"},
		{name: "negative count", count: -1, kind: errdefs.IsInvalidArgument, message: "negative"},
		{name: "held by another", ids: []string{"4", "3"}, kind: errdefs.IsConflict,
			message: fmt.Sprintf("GPU 3 (%s) is held by instance other", uuid(3))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Not parallel: the cases share one host.
			_, a := open(t, h)
			if _, err := a.Reserve("other", Request{IDs: []string{"3"}}); err != nil {
				t.Fatal(err)
			}
			got, err := a.Reserve("mine", Request{Count: tt.count, IDs: tt.ids})
			if tt.kind != nil {
				if !tt.kind(err) || !strings.Contains(err.Error(), tt.message) {
					t.Fatalf("error = %v, want one containing %q", err, tt.message)
				}
				if held := a.Held("mine"); held != nil {
					t.Errorf("a failed Reserve holds %v", held)
				}
				return
			}
			if err != nil || !slices.Equal(indexes(got), tt.want) {
				t.Fatalf("Reserve = %v, %v; want %v", indexes(got), err, tt.want)
			}
			for _, d := range got {
				if d.UUID != uuid(d.Index) || d.MinorNumber != d.Index || d.PCIBusID == "" {
					t.Errorf("device %+v does not describe GPU %d", d, d.Index)
				}
			}
			// Asking again, even in other words, is idempotent.
			again := slices.Clone(tt.ids)
			for i, id := range again {
				if !strings.HasPrefix(id, "GPU-") {
					continue
				}
				for j := range 8 {
					if uuid(j) == id {
						again[i] = fmt.Sprint(j)
					}
				}
			}
			slices.Reverse(again)
			if got2, err := a.Reserve("mine", Request{IDs: again}); err != nil || !slices.Equal(got2, got) {
				t.Errorf("Reserve again with %v = %v, %v; want %v", again, got2, err, got)
			}
			if _, err := a.Reserve("mine", Request{IDs: []string{"2"}}); !errdefs.IsConflict(err) {
				t.Errorf("Reserve of other GPUs while holding some: %v", err)
			}
		})
	}
}

func TestReserveEmptyInstance(t *testing.T) {
	t.Parallel()
	_, a := open(t, newFakeHost(t))
	if _, err := a.Reserve("", Request{Count: 1}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Reserve without an instance: %v", err)
	}
	if err := a.Restore("", nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Restore without an instance: %v", err)
	}
}

// TestRestore plays an agent restart: the allocation is rebuilt from what the
// containers' labels recorded, and nothing held is handed out again.
func TestRestore(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	_, before := open(t, h)
	labels := map[string][]string{} // instance -> GPU UUIDs, as a container label would keep them
	for _, r := range []struct {
		instance string
		count    int
	}{{"a", 3}, {"b", 1}, {"c", 4}} {
		ds, err := before.Reserve(r.instance, Request{Count: r.count})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			labels[r.instance] = append(labels[r.instance], d.UUID)
		}
	}

	inv, after := open(t, h) // the restarted agent
	for instance, uuids := range labels {
		if err := after.Restore(instance, uuids); err != nil {
			t.Fatalf("Restore(%s): %v", instance, err)
		}
	}
	for instance := range labels {
		if got, want := after.Held(instance), before.Held(instance); !slices.Equal(got, want) {
			t.Errorf("Held(%s) = %v, want %v", instance, got, want)
		}
	}
	for _, g := range inv.GPUs() {
		if g.HeldBy == "" {
			t.Errorf("GPU %d is free after Restore", g.Index)
		}
	}
	if _, err := after.Reserve("new", Request{Count: 1}); !errdefs.IsConflict(err) || err.Error() != "requested 1 GPU, 0 free" {
		t.Errorf("Reserve after Restore: %v", err)
	}
	// A restored instance asking again for what it has gets it.
	if got, err := after.Reserve("c", Request{Count: 4}); err != nil || !slices.Equal(got, before.Held("c")) {
		t.Errorf("Reserve by a restored instance = %v, %v", got, err)
	}

	// Restoring the same labels again changes nothing.
	if err := after.Restore("a", labels["a"]); err != nil || !slices.Equal(after.Held("a"), before.Held("a")) {
		t.Errorf("second Restore: %v, held %v", err, after.Held("a"))
	}
	// A GPU claimed by a second instance stays with the first.
	err := after.Restore("intruder", []string{labels["b"][0], labels["a"][1]})
	if !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "instance b") || !strings.Contains(err.Error(), "instance a") {
		t.Errorf("Restore of GPUs held by others: %v", err)
	}
	if got := after.Held("intruder"); got != nil {
		t.Errorf("intruder holds %v", got)
	}
	if got := after.Held("b"); len(got) != 1 || got[0].UUID != labels["b"][0] {
		t.Errorf("b lost its GPU: %v", got)
	}
	// A GPU no longer present is left out, without failing the restore.
	after.Release("b")
	if err := after.Restore("d", []string{"GPU-gone", labels["b"][0]}); err != nil {
		t.Errorf("Restore with a missing GPU: %v", err)
	}
	if got := after.Held("d"); len(got) != 1 || got[0].UUID != labels["b"][0] {
		t.Errorf("Held(d) = %v", got)
	}
}

// A GPU with MIG enabled has no whole-GPU CDI device: count requests pass
// it over, and asking for it by name says why.
func TestReserveSkipsMIGEnabledGPUs(t *testing.T) {
	t.Parallel()
	h := newFakeHost(t)
	h.device(0).GetMigModeFunc = func() (int, int, nvml.Return) {
		return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS
	}
	inv, alloc := open(t, h)
	if inv.GPUs()[0].MIGMode != MIGEnabled {
		t.Fatalf("GPU 0 MIG mode = %q", inv.GPUs()[0].MIGMode)
	}
	got, err := alloc.Reserve("a", Request{Count: 1})
	if err != nil || len(got) != 1 || got[0].Index != 1 {
		t.Fatalf("count request got %+v, %v; want GPU 1", got, err)
	}
	if free, total := alloc.Counts(); free != 6 || total != 8 {
		t.Fatalf("counts = %d free of %d, want 6 of 8", free, total)
	}
	_, err = alloc.Reserve("b", Request{IDs: []string{"0"}})
	if !errdefs.IsConflict(err) || !strings.Contains(err.Error(), "MIG") {
		t.Fatalf("explicit MIG-enabled GPU: %v, want a Conflict naming MIG", err)
	}
}
