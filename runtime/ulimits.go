package runtime

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
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
// more (nofile: 1 to MaxNofile, never unlimited; rtprio: 0 only).
//
// rtprio above 0 lets a rental's processes take SCHED_FIFO or SCHED_RR
// without any capability. The CPU limits of its cgroup (cpu.max) bound
// only normal tasks, and a kernel without RT group scheduling (most, and
// every cgroup v2 host) has nothing else: a real-time busy loop starves
// the agent, containerd and the other rentals on its CPUs. It is the one
// limit that lifts a host-wide bound. nice (a higher priority among normal
// tasks) only shares out the rental's own cgroup's CPU time, and rttime
// only bounds real-time tasks, which rtprio 0 leaves the rental without:
// both stay allowed.
func ValidateUlimit(name string, v int64) error {
	if !slices.Contains(UlimitNames, name) {
		return fmt.Errorf("unknown limit; want one of %s", strings.Join(UlimitNames, ", "))
	}
	if name == "nofile" && (v < 1 || v > MaxNofile) {
		return fmt.Errorf("must be between 1 and %d", MaxNofile)
	}
	if name == "rtprio" && v != 0 {
		return fmt.Errorf("must be 0: real-time scheduling escapes the rental's CPU limits and can starve the host")
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

// rlimitTypes are Linux's RLIMIT_ numbers by ulimit name, as runc names
// a limit it failed to set ("error setting rlimit type 7").
var rlimitTypes = map[string]int{"cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5,
	"nproc": 6, "nofile": 7, "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12,
	"nice": 13, "rtprio": 14, "rttime": 15}

// UlimitError refuses a limit the runtime cannot grant on this host. It is
// an errdefs.FailedPrecondition naming the field ulimits.NAME: the request
// is valid, the host cannot run it.
type UlimitError struct {
	// Name is the limit's ulimit name; empty when runc's message named
	// a type the agent does not know.
	Name string
	// Value is the limit asked for (-1: unlimited); Ceiling the most this
	// host grants. Both are unset for a refusal reported by runc (Cause).
	Value   int64
	Ceiling uint64
	// Cause is runc's refusal, when the limit got as far as runc.
	Cause error
}

func (e *UlimitError) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("the runtime cannot grant the limit %s on this host: %v", e.Name, e.Cause)
	}
	asked := strconv.FormatInt(e.Value, 10)
	if e.Value == UlimitUnlimited {
		asked = "unlimited"
	}
	return fmt.Sprintf("%s %s is above this host's ceiling of %d: the runtime cannot raise limits above the agent's own (no CAP_SYS_RESOURCE)",
		e.Name, asked, e.Ceiling)
}

// ErrorField names the request field at fault.
func (e *UlimitError) ErrorField() string {
	if e.Name == "" {
		return "ulimits"
	}
	return "ulimits." + e.Name
}

// Unwrap lists the kind first, so that errdefs.Resolve finds it before any
// kind the cause carries.
func (e *UlimitError) Unwrap() []error {
	if e.Cause == nil {
		return []error{errdefs.ErrFailedPrecondition}
	}
	return []error{errdefs.ErrFailedPrecondition, e.Cause}
}

// CheckUlimitsGrantable refuses, before anything is created, the first
// limit (by name) that asks more than the agent's own hard limit, the
// most a runtime without CAP_SYS_RESOURCE gives a container: its runc
// would fail the start with "error setting rlimit". canRaise is asked
// only when some limit is that high; known false (the probe failed)
// lets the start go on, and a refusal by runc is a RlimitRefused.
func CheckUlimitsGrantable(limits map[string]int64, canRaise func() (can, known bool)) error {
	names := make([]string, 0, len(limits))
	for name := range limits {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		v := limits[name]
		ceiling, ok := UlimitCeiling(name)
		if !ok || ceiling == RlimitInfinity || (v != UlimitUnlimited && uint64(v) <= ceiling) {
			continue
		}
		if can, known := canRaise(); can || !known {
			return nil
		}
		return &UlimitError{Name: name, Value: v, Ceiling: ceiling}
	}
	return nil
}

// rlimitRefusal is runc's message for a limit it could not set.
var rlimitRefusal = regexp.MustCompile(`error setting rlimit type (\d+)`)

// RlimitRefused turns runc's refusal of a limit (no CAP_SYS_RESOURCE to
// raise it) into a *UlimitError naming the limit, or returns err as it
// is. The runtimes' error conversions call it, so that a start that got
// that far is a 409 naming the field, not an internal error.
func RlimitRefused(err error) error {
	if err == nil {
		return nil
	}
	m := rlimitRefusal.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	var ue *UlimitError
	if errors.As(err, &ue) {
		return err
	}
	n, _ := strconv.Atoi(m[1])
	ue = &UlimitError{Cause: err}
	for name, t := range rlimitTypes {
		if t == n {
			ue.Name = name
		}
	}
	return ue
}
