package gpu

import (
	"math/bits"
	"slices"
)

// maxCandidates bounds how many n-GPU subsets of the free GPUs place
// scores one by one (C(8,4) is 70, C(16,8) is 12,870). Past it, place
// scores one candidate per free GPU: that GPU with its n-1 best-connected
// free peers.
const maxCandidates = 5000

// place picks n of the free GPUs (n <= len(free), free ordered by index)
// for a count request. In order of importance:
//
//  1. the best worst link inside the set (NVLink over one PCIe switch over
//     one host bridge over one NUMA node over across sockets),
//  2. the best links overall (the sum of the pairs' ranks),
//  3. what is left for later requests: at each link class from the best,
//     the largest free set connected at least that well, then how many
//     free GPUs still have a partner that well connected,
//  4. the lowest indexes.
func (inv *Inventory) place(free []*gpuState, n int) []*gpuState {
	if n >= len(free) {
		return free
	}
	var best []*gpuState
	var bestScore score
	consider := func(set []*gpuState) {
		s := inv.score(set, free)
		if best == nil || s.better(bestScore) {
			best, bestScore = slices.Clone(set), s
		}
	}
	if binomial(len(free), n) <= maxCandidates {
		combinations(free, n, consider)
	} else {
		for _, seed := range free {
			consider(inv.nearest(seed, free, n))
		}
	}
	slices.SortFunc(best, func(x, y *gpuState) int { return x.info.Index - y.info.Index })
	return best
}

// score is how good a candidate set is; see place.
type score struct {
	worst, sum int
	left       []int // larger is better, compared in order
}

func (s score) better(o score) bool {
	if s.worst != o.worst {
		return s.worst < o.worst
	}
	if s.sum != o.sum {
		return s.sum < o.sum
	}
	return slices.Compare(s.left, o.left) > 0
}

func (inv *Inventory) score(set, free []*gpuState) score {
	s := score{worst: -1}
	for i, a := range set {
		for _, b := range set[i+1:] {
			r := inv.links[a.pos][b.pos].rank()
			s.worst = max(s.worst, r)
			s.sum += r
		}
	}
	var rest []*gpuState
	for _, g := range free {
		if !slices.Contains(set, g) {
			rest = append(rest, g)
		}
	}
	for _, r := range inv.ranks {
		s.left = append(s.left, inv.largestSet(rest, r), inv.partnered(rest, r))
	}
	return s
}

// largestSet is the size of the largest subset of gs in which every pair's
// link ranks at most r (a maximum clique; gs is at most a machine's GPUs).
func (inv *Inventory) largestSet(gs []*gpuState, r int) int {
	if len(gs) > 64 {
		gs = gs[:64]
	}
	adj := make([]uint64, len(gs))
	for i, a := range gs {
		for j, b := range gs {
			if i != j && inv.links[a.pos][b.pos].rank() <= r {
				adj[i] |= 1 << j
			}
		}
	}
	best := 0
	var grow func(size int, cand uint64)
	grow = func(size int, cand uint64) {
		if cand == 0 {
			best = max(best, size)
			return
		}
		if size+bits.OnesCount64(cand) <= best {
			return
		}
		for cand != 0 {
			if size+bits.OnesCount64(cand) <= best {
				return
			}
			v := bits.TrailingZeros64(cand)
			cand &^= 1 << v
			grow(size+1, cand&adj[v])
		}
	}
	var all uint64
	for i := range gs {
		all |= 1 << i
	}
	grow(0, all)
	return best
}

// partnered counts the GPUs of gs that have a peer in gs linked at rank r
// or better.
func (inv *Inventory) partnered(gs []*gpuState, r int) int {
	n := 0
	for _, a := range gs {
		for _, b := range gs {
			if a != b && inv.links[a.pos][b.pos].rank() <= r {
				n++
				break
			}
		}
	}
	return n
}

// nearest is seed and its n-1 best-connected GPUs of free.
func (inv *Inventory) nearest(seed *gpuState, free []*gpuState, n int) []*gpuState {
	others := make([]*gpuState, 0, len(free))
	for _, g := range free {
		if g != seed {
			others = append(others, g)
		}
	}
	slices.SortStableFunc(others, func(x, y *gpuState) int {
		return inv.links[seed.pos][x.pos].rank() - inv.links[seed.pos][y.pos].rank()
	})
	return append([]*gpuState{seed}, others[:n-1]...)
}

// BestFree says, for a set of Size GPUs, how well connected the best set
// still free is: what a scheduler reads to tell which rentals the host can
// serve well right now.
type BestFree struct {
	Size int `json:"size"`
	// Available says whether Size healthy GPUs are free at all.
	Available bool `json:"available"`
	// Link is the worst link inside the best free set (X for a single
	// GPU); empty when not Available.
	Link Link `json:"link"`
}

// bestFreeSizes are the set sizes BestFree reports.
var bestFreeSizes = []int{1, 2, 4, 8}

// BestFree says, for sets of 1, 2, 4 and 8 GPUs, whether that many are
// free and how well connected the best such set is. Without an allocator
// every healthy GPU counts as free.
func (inv *Inventory) BestFree() []BestFree {
	inv.mu.Lock()
	holders := inv.holders
	inv.mu.Unlock()
	// Asked outside inv.mu, as in GPUs.
	if holders != nil {
		return holders.BestFree()
	}
	var free []*gpuState
	for _, g := range inv.gpus {
		if inv.unhealthyReason(g) == "" && g.info.MIGMode != MIGEnabled {
			free = append(free, g)
		}
	}
	return inv.bestFree(free)
}

func (inv *Inventory) bestFree(free []*gpuState) []BestFree {
	out := make([]BestFree, 0, len(bestFreeSizes))
	for _, size := range bestFreeSizes {
		b := BestFree{Size: size}
		switch {
		case size > len(free):
		case size == 1:
			b.Available, b.Link = true, LinkSelf
		default:
			b.Available = true
			b.Link = linkOfRank(inv.score(inv.place(free, size), nil).worst)
		}
		out = append(out, b)
	}
	return out
}

func binomial(n, k int) int {
	k = min(k, n-k)
	r := 1
	for i := range k {
		r = r * (n - i) / (i + 1)
		if r > maxCandidates {
			return r
		}
	}
	return r
}

// combinations calls f with every k-subset of gs, in lexicographic order
// of positions; f must not keep the slice.
func combinations(gs []*gpuState, k int, f func([]*gpuState)) {
	set := make([]*gpuState, k)
	var rec func(start, depth int)
	rec = func(start, depth int) {
		if depth == k {
			f(set)
			return
		}
		for i := start; i <= len(gs)-(k-depth); i++ {
			set[depth] = gs[i]
			rec(i+1, depth+1)
		}
	}
	rec(0, 0)
}
