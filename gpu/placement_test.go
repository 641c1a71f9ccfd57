package gpu

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-gpuallocator/gpuallocator"

	"github.com/host-agent/host-agent/gpu/gpumock"
)

func openMock(t *testing.T, name string) (*Inventory, *Allocator) {
	t.Helper()
	srv, err := gpumock.New(name)
	if err != nil {
		t.Fatal(err)
	}
	return open(t, srv)
}

// numaNodes lists the NUMA node of each device, as the inventory reports it.
func numaNodes(inv *Inventory, ds []Device) []int {
	all := inv.GPUs()
	var out []int
	for _, d := range ds {
		out = append(out, all[d.Index].NUMANode)
	}
	return out
}

func TestTopologyMatrix(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		machine string
		rows    []string // each row's links, joined by spaces
	}{
		{gpumock.DGXA100, []string{
			"X NV NV NV NV NV NV NV",
			"NV X NV NV NV NV NV NV",
		}},
		{gpumock.PCIe8x4090, []string{
			"X PIX NODE NODE SYS SYS SYS SYS",
			"PIX X NODE NODE SYS SYS SYS SYS",
			"NODE NODE X PIX SYS SYS SYS SYS",
		}},
	} {
		t.Run(tt.machine, func(t *testing.T) {
			inv, _ := openMock(t, tt.machine)
			topo := inv.Topology()
			if !slices.Equal(topo.GPUs, []int{0, 1, 2, 3, 4, 5, 6, 7}) ||
				!slices.Equal(topo.NUMANodes, []int{0, 0, 0, 0, 1, 1, 1, 1}) {
				t.Errorf("GPUs %v, NUMA nodes %v", topo.GPUs, topo.NUMANodes)
			}
			for i, want := range tt.rows {
				var got []string
				for _, l := range topo.Links[i] {
					got = append(got, string(l))
				}
				if strings.Join(got, " ") != want {
					t.Errorf("row %d = %v, want %s", i, got, want)
				}
			}
		})
	}
}

func TestPlaceNVSwitchOneNUMANode(t *testing.T) {
	t.Parallel()
	for _, machine := range []string{gpumock.DGXA100, gpumock.DGXH100} {
		t.Run(machine, func(t *testing.T) {
			t.Parallel()
			inv, a := openMock(t, machine)

			got, err := a.Reserve("four", Request{Count: 4})
			if err != nil {
				t.Fatal(err)
			}
			if n := numaNodes(inv, got); len(n) != 4 || slices.Compact(n)[0] != n[3] {
				t.Errorf("4-GPU rental got GPUs %v on NUMA nodes %v, want one node", indexes(got), n)
			}
			a.Release("four")

			// A 2-GPU rental lands on socket 0 (the pair under one PCIe
			// switch); a 4-GPU rental then goes to socket 1 rather than
			// taking socket 0's other two GPUs and crossing sockets.
			two, err := a.Reserve("two", Request{Count: 2})
			if err != nil {
				t.Fatal(err)
			}
			if n := numaNodes(inv, two); !slices.Equal(n, []int{0, 0}) {
				t.Fatalf("2-GPU rental got GPUs %v on NUMA nodes %v, want socket 0", indexes(two), n)
			}
			four, err := a.Reserve("four", Request{Count: 4})
			if err != nil {
				t.Fatal(err)
			}
			if n := numaNodes(inv, four); !slices.Equal(n, []int{1, 1, 1, 1}) {
				t.Errorf("4-GPU rental beside a 2-GPU one on socket 0 got GPUs %v on NUMA nodes %v, want socket 1",
					indexes(four), n)
			}
		})
	}
}

func TestPlacePCIePairsUnderOneSwitch(t *testing.T) {
	t.Parallel()
	inv, a := openMock(t, gpumock.PCIe8x4090)
	topo := inv.Topology()

	// A single GPU first, so that a careless choice would split a pair.
	if _, err := a.Reserve("one", Request{Count: 1}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		id := fmt.Sprintf("pair-%d", i)
		got, err := a.Reserve(id, Request{Count: 2})
		if err != nil {
			t.Fatal(err)
		}
		if l := topo.Links[got[0].Index][got[1].Index]; l != LinkPIX {
			t.Errorf("%s got GPUs %v linked by %s, want a pair under one switch (PIX)", id, indexes(got), l)
		}
	}
	for _, b := range a.BestFree() {
		if b.Size == 1 && (!b.Available || b.Link != LinkSelf) || b.Size > 1 && b.Available {
			t.Errorf("BestFree with one GPU left: %+v", b)
		}
	}
}

func TestBestFree(t *testing.T) {
	t.Parallel()
	_, a := openMock(t, gpumock.PCIe8x4090)
	want := map[int]Link{1: LinkSelf, 2: LinkPIX, 4: LinkNODE, 8: LinkSYS}
	for _, b := range a.BestFree() {
		if !b.Available || b.Link != want[b.Size] {
			t.Errorf("BestFree on an idle PCIe box: %+v, want link %s", b, want[b.Size])
		}
	}
	// With one GPU of each socket's pairs held, no 4 GPUs share a socket.
	for _, id := range []string{"0", "2", "4", "6"} {
		if _, err := a.Reserve("x"+id, Request{IDs: []string{id}}); err != nil {
			t.Fatal(err)
		}
	}
	want = map[int]Link{1: LinkSelf, 2: LinkNODE, 4: LinkSYS, 8: ""}
	for _, b := range a.BestFree() {
		if b.Link != want[b.Size] || b.Available != (b.Size <= 4) {
			t.Errorf("BestFree with GPUs 0, 2, 4, 6 held: %+v, want link %q", b, want[b.Size])
		}
	}
}

// stranded counts the free GPUs whose best-connected free peer is linked
// worse than their best peer on the machine: a pair broken up, so that a
// later 2-GPU rental on it runs slower than the machine allows.
func stranded(inv *Inventory, free []int) int {
	n := 0
	for _, i := range free {
		bestAll, bestFree := 1<<30, 1<<30
		for j := range inv.gpus {
			if i == j {
				continue
			}
			r := inv.links[i][j].rank()
			bestAll = min(bestAll, r)
			if slices.Contains(free, j) {
				bestFree = min(bestFree, r)
			}
		}
		if bestFree > bestAll {
			n++
		}
	}
	return n
}

// runWorkload plays a fixed pseudo-random sequence of steps on inv's GPUs,
// the mix a marketplace sees: starts of 1, 2 or 4 GPUs, and rentals ending
// in any order. pick chooses each start's GPUs among the free ones. The
// sequence depends only on the seed and on how many GPUs are free, so every
// policy plays the same one. It returns the stranded GPUs summed over the
// steps and the number of steps that left any stranded.
func runWorkload(t *testing.T, inv *Inventory, steps int, pick func(free []int, size int) []int) (total, stepsWithStranded int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(25, 2026))
	held := map[int][]int{} // start step -> GPUs
	free := func() []int {
		var out []int
		for i := range inv.gpus {
			if !slices.ContainsFunc(slices.Collect(maps.Values(held)), func(h []int) bool { return slices.Contains(h, i) }) {
				out = append(out, i)
			}
		}
		return out
	}
	sizes := []int{1, 1, 2, 2, 4}
	for k := range steps {
		f := free()
		size := sizes[rng.IntN(len(sizes))]
		if len(held) > 0 && (rng.IntN(3) == 0 || size > len(f)) {
			keys := slices.Sorted(maps.Keys(held))
			delete(held, keys[rng.IntN(len(keys))])
		} else if size <= len(f) {
			got := pick(f, size)
			if len(got) != size {
				t.Fatalf("step %d: picked %v of %v for %d", k, got, f, size)
			}
			held[k] = got
		}
		n := stranded(inv, free())
		total += n
		if n > 0 {
			stepsWithStranded++
		}
	}
	return total, stepsWithStranded
}

// TestPlaceStrandsFewerThanGPUAllocator plays one workload of mixed starts
// and terminates on the PCIe box with three policies: the agent's, NVIDIA
// go-gpuallocator's best-effort policy on the same mock NVML, and first free
// by index (the agent's former choice). The agent's must leave fewer GPUs
// stranded (cut off from their PCIe switch partner) than both.
func TestPlaceStrandsFewerThanGPUAllocator(t *testing.T) {
	srv, err := gpumock.New(gpumock.PCIe8x4090)
	if err != nil {
		t.Fatal(err)
	}
	inv, _ := open(t, srv)

	ours := func(free []int, size int) []int {
		gs := make([]*gpuState, len(free))
		for i, f := range free {
			gs[i] = inv.gpus[f]
		}
		var out []int
		for _, g := range inv.place(gs, size) {
			out = append(out, g.pos)
		}
		return out
	}

	other, err := gpumock.New(gpumock.PCIe8x4090)
	if err != nil {
		t.Fatal(err)
	}
	devices := gpuAllocatorDevices(t, other)
	policy := gpuallocator.NewBestEffortPolicy()
	bestEffort := func(free []int, size int) []int {
		var avail []*gpuallocator.Device
		for _, f := range free {
			avail = append(avail, devices[f])
		}
		var out []int
		for _, d := range policy.Allocate(avail, nil, size) {
			out = append(out, d.Index)
		}
		slices.Sort(out)
		return out
	}
	byIndex := func(free []int, size int) []int { return slices.Clone(free[:size]) }

	const steps = 400
	totalOurs, withOurs := runWorkload(t, inv, steps, ours)
	totalBE, withBE := runWorkload(t, inv, steps, bestEffort)
	totalIdx, withIdx := runWorkload(t, inv, steps, byIndex)

	var b strings.Builder
	fmt.Fprintf(&b, "stranded GPUs on %s over %d steps of mixed starts (1, 2, 4 GPUs) and terminates\n", gpumock.PCIe8x4090, steps)
	fmt.Fprintf(&b, "| %-27s | %-21s | %-25s |\n", "policy", "stranded GPU-steps", "steps with any stranded")
	fmt.Fprintf(&b, "| %-27s | %21d | %25d |\n", "host-agent", totalOurs, withOurs)
	fmt.Fprintf(&b, "| %-27s | %21d | %25d |\n", "go-gpuallocator best-effort", totalBE, withBE)
	fmt.Fprintf(&b, "| %-27s | %21d | %25d |\n", "first free by index", totalIdx, withIdx)
	t.Log("\n" + b.String())

	if totalOurs >= totalBE || totalOurs >= totalIdx {
		t.Errorf("the agent's placement strands %d GPU-steps; go-gpuallocator %d, by index %d", totalOurs, totalBE, totalIdx)
	}
}

func gpuAllocatorDevices(t *testing.T, srv *gpumock.Machine) []*gpuallocator.Device {
	t.Helper()
	devices, err := gpuallocator.NewDevices(gpuallocator.WithNvmlLib(srv))
	if err != nil {
		t.Fatalf("go-gpuallocator on the mock: %v", err)
	}
	return devices
}
