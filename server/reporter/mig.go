package reporter

import "github.com/host-agent/host-agent/gpu"

// migLister is the part of the inventory that lists the MIG devices rented
// as units; an inventory without it (or without MIG rentals) has none.
type migLister interface {
	MIGDevices() []gpu.MIGDevice
}

// migFree counts the free, healthy MIG devices of each profile the host
// has; nil when it has none.
func migFree(migs []gpu.MIGDevice) map[string]int {
	if len(migs) == 0 {
		return nil
	}
	out := map[string]int{}
	for _, m := range migs {
		if _, ok := out[m.Profile]; !ok {
			out[m.Profile] = 0
		}
		if m.Healthy && m.HeldBy == "" {
			out[m.Profile]++
		}
	}
	return out
}
