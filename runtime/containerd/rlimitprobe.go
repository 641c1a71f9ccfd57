package containerd

import (
	"context"
	"fmt"
	"math"
	"strings"

	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime"
)

// canRaise says whether GPU rentals get the unlimited memlock default. An
// agent with CAP_SYS_RESOURCE knows it at once; one without may still run
// on a runtime that has it (the agent in a container of its own, with its
// capabilities dropped, and containerd on the host), so the runtime is
// asked once, the first time a rental needs it: a task is created with an
// unlimited memlock from an empty root file system, which runc refuses
// when it cannot raise the limit. Until an answer comes, the default is
// kept.
func (r *Runtime) canRaise(ctx context.Context) bool {
	return r.raise.CanRaise(r.log, "runtime", func() (bool, error) { return r.probeRaise(ctx) })
}

// probeRaise is the probe task with an unlimited memlock: runc sets the
// limits once its init is ready, before it looks for the process, so a
// refusal names the limit.
func (r *Runtime) probeRaise(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), probeTimeout)
	defer cancel()
	err := r.probeTask(ctx, oci.WithRlimit(&specs.POSIXRlimit{Type: "RLIMIT_MEMLOCK", Hard: math.MaxUint64, Soft: math.MaxUint64}))
	switch {
	case err == nil:
		return true, nil
	case strings.Contains(err.Error(), "setting rlimit"):
		return false, nil
	}
	return false, fmt.Errorf("probe task: %w", err)
}

// grantable refuses a limit above the agent's own where the runtime cannot
// raise limits (runtime.CheckUlimitsGrantable), asking the runtime once
// when the agent's capabilities do not tell.
func (r *Runtime) grantable(ctx context.Context, spec runtime.InstanceSpec) error {
	return runtime.CheckUlimitsGrantable(spec.Ulimits, func() (bool, bool) {
		return r.raise.Ask(r.log, "runtime", func() (bool, error) { return r.probeRaise(ctx) })
	})
}

// ulimits returns the limits a spec gets: its own, and the GPU defaults
// where the runtime allows raising them.
func (r *Runtime) ulimits(ctx context.Context, spec runtime.InstanceSpec) map[string]int64 {
	if _, asked := spec.Ulimits["memlock"]; asked || len(spec.GPUs) == 0 {
		return spec.UlimitsFor(false)
	}
	return spec.UlimitsFor(r.canRaise(ctx))
}
