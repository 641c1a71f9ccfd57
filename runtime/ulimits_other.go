//go:build !linux

package runtime

import "math"

// RlimitInfinity is RLIM_INFINITY: no limit.
const RlimitInfinity = math.MaxUint64

// UlimitCeiling knows no ceiling off Linux, where runc does not run.
func UlimitCeiling(string) (uint64, bool) { return 0, false }
