package runtime

import (
	"fmt"
	"os"
	"slices"
	"strconv"
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

// UlimitsFor returns EnforcedUlimits less the GPU default memlock where
// the host cannot raise it (raise false): the start would fail.
func (s InstanceSpec) UlimitsFor(raise bool) map[string]int64 {
	out := s.EnforcedUlimits()
	if _, asked := s.Ulimits["memlock"]; !asked && !raise {
		delete(out, "memlock")
	}
	return out
}

// capSysResource is CAP_SYS_RESOURCE's bit: raising a hard limit needs it.
const capSysResource = 24

// CanRaiseRlimits reports whether this host lets containers' limits be
// raised above the defaults: a sandbox that withholds CAP_SYS_RESOURCE from
// the agent withholds it from the runtime's runc too, and every start
// asking for more would fail.
func CanRaiseRlimits() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && caps&(1<<capSysResource) != 0
		}
	}
	return false
}
