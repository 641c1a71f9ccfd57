package containerd

import (
	"context"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// Named steps at which Options.Fault is called: a start has pulled its
// image, created its container (and snapshot), set up its network (CNI
// ADD), created its task, started it; a terminate has deleted the task,
// and is about to tear down the network (CNI DEL) before the container.
const (
	FaultAfterPull             = "after-pull"
	FaultAfterCreate           = "after-create"
	FaultAfterNetworkSetup     = "after-network-setup"
	FaultAfterTaskCreate       = "after-task-create"
	FaultAfterTaskStart        = "after-task-start"
	FaultAfterTaskDelete       = "after-task-delete"
	FaultBeforeNetworkTeardown = "before-network-teardown"
)

// FaultSteps lists the steps of a rental's own in the order a start and a
// terminate reach them (the network's are tested on their own).
var FaultSteps = []string{FaultAfterPull, FaultAfterCreate, FaultAfterTaskCreate, FaultAfterTaskStart, FaultAfterTaskDelete}

func (r *Runtime) fault(step string) {
	if r.opts.Fault != nil {
		r.opts.Fault(step)
	}
}

// startLeasePrefix names the leases a start holds its image and snapshot
// by until the container refers to them.
const startLeasePrefix = "host-agent-start-"

// dropStartLeases deletes the start leases an earlier run of the agent
// left when it died mid-start: no start of this run has begun yet, and a
// leftover lease would pin its content until it expires. containerd being
// down is no error here; the lease then expires on its own.
func (r *Runtime) dropStartLeases() {
	ctx, cancel := context.WithTimeout(r.nsCtx(context.Background()), 10*time.Second)
	defer cancel()
	ls, err := r.client.LeasesService().List(ctx)
	if err != nil {
		r.log.Debug("list leases", "error", err)
		return
	}
	for _, l := range ls {
		if !strings.HasPrefix(l.ID, startLeasePrefix) {
			continue
		}
		if err := r.client.LeasesService().Delete(ctx, l); err != nil && !errdefs.IsNotFound(err) {
			r.log.Warn("delete a start lease left by an earlier run", "lease", l.ID, "error", err)
			continue
		}
		r.log.Info("deleted a start lease left by an earlier run", "lease", l.ID, "instance", l.Labels["host-agent.io/instance-id"])
	}
}
