package runtime

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
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

// RaiseProbe keeps whether a runtime's runc can raise containers' limits:
// known at once where the agent has CAP_SYS_RESOURCE (CanRaiseRlimits),
// else asked of the runtime the first time a rental needs it, until an
// answer comes.
type RaiseProbe struct {
	mu         sync.Mutex
	known, can bool
}

// NewRaiseProbe starts from the agent's own capabilities.
func NewRaiseProbe() *RaiseProbe {
	p := &RaiseProbe{}
	if CanRaiseRlimits() {
		p.known, p.can = true, true
	}
	return p
}

// CanRaise answers from what is known, else runs probe (one at a time)
// and keeps its answer; a probe that fails answers no, this time, and
// is asked again next time. who names the runtime in the log.
func (p *RaiseProbe) CanRaise(log *slog.Logger, who string, probe func() (bool, error)) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.known {
		return p.can
	}
	ok, err := probe()
	if err != nil {
		log.Warn("could not tell whether the "+who+" can raise containers' limits: this GPU rental keeps the default memlock", "error", err)
		return false
	}
	p.known, p.can = true, ok
	if ok {
		log.Info("the " + who + " can raise containers' limits: GPU rentals get an unlimited memlock")
	} else {
		log.Warn("the " + who + " cannot raise containers' limits (no CAP_SYS_RESOURCE): GPU rentals keep the default memlock instead of unlimited")
	}
	return ok
}
