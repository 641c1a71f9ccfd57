package runtime

import (
	"fmt"
	"slices"
	"strings"
)

// UlimitNames are the process limits a rental may set, by their ulimit
// names (RLIMIT_ + the upper-cased name).
var UlimitNames = []string{"as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue",
	"nice", "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"}

// MaxNofile is the largest nofile the kernel allows by default
// (fs.nr_open); a higher one fails the start.
const MaxNofile = 1 << 20

// UlimitUnlimited stands for no limit.
const UlimitUnlimited = -1

// ValidateUlimit checks one limit: a known name, and -1 or a value of 0 or
// more (nofile: 1 to MaxNofile, never unlimited).
func ValidateUlimit(name string, v int64) error {
	if !slices.Contains(UlimitNames, name) {
		return fmt.Errorf("unknown limit; want one of %s", strings.Join(UlimitNames, ", "))
	}
	if name == "nofile" && (v < 1 || v > MaxNofile) {
		return fmt.Errorf("must be between 1 and %d", MaxNofile)
	}
	if v < UlimitUnlimited {
		return fmt.Errorf("must be -1 (unlimited) or 0 or more")
	}
	return nil
}

// EnforcedUlimits returns the spec's limits with the GPU defaults: memlock
// unlimited for a rental holding GPUs (NCCL and RDMA pin memory), unless it
// names its own.
func (s InstanceSpec) EnforcedUlimits() map[string]int64 {
	out := map[string]int64{}
	if len(s.GPUs) > 0 {
		out["memlock"] = UlimitUnlimited
	}
	for k, v := range s.Ulimits {
		out[k] = v
	}
	return out
}
