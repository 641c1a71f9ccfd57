package runtime

import "golang.org/x/sys/unix"

// RlimitInfinity is RLIM_INFINITY: no limit.
const RlimitInfinity = unix.RLIM_INFINITY

// UlimitCeiling is the agent's own hard limit for the ulimit name. It
// stands for the runtime's, which the agent cannot read: where runc lacks
// CAP_SYS_RESOURCE, the agent and the runtime run in the same sandbox,
// under the same limits, and no container gets more. ok is false for a
// name it cannot read.
func UlimitCeiling(name string) (hard uint64, ok bool) {
	t, known := rlimitTypes[name]
	if !known {
		return 0, false
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(t, &lim); err != nil {
		return 0, false
	}
	return lim.Max, true
}
