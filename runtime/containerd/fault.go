package containerd

import (
	"context"
	"strings"
	"sync"
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

// dropStartLeases deletes the start leases no start of this agent holds:
// those an earlier run left when it died mid-start, and those of this run
// whose deletion failed because containerd was away (a start cut off by
// containerd's crash). The watcher calls it each time it connects; a
// leftover lease would pin its image and snapshot until it expires.
func (r *Runtime) dropStartLeases(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ls, err := r.client.LeasesService().List(ctx)
	if err != nil {
		r.log.Debug("list leases", "error", err)
		return
	}
	for _, l := range ls {
		if !strings.HasPrefix(l.ID, startLeasePrefix) || r.startLeases.held(l.ID) {
			continue
		}
		if err := r.client.LeasesService().Delete(ctx, l); err != nil && !errdefs.IsNotFound(err) {
			r.log.Warn("delete a start lease no start holds", "lease", l.ID, "error", err)
			continue
		}
		r.log.Info("deleted a start lease no start holds", "lease", l.ID, "instance_id", l.Labels["host-agent.io/instance-id"])
	}
}

// leaseSet is the start leases the starts in progress hold. A start adds
// its lease before creating it and removes it after deleting it, so that
// dropStartLeases never takes a lease from under a start.
type leaseSet struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (s *leaseSet) add(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[string]bool{}
	}
	s.ids[id] = true
}

func (s *leaseSet) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ids, id)
}

func (s *leaseSet) held(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[id]
}
