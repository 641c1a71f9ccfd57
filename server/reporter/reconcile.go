package reporter

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// discrepancies is what one heartbeat answer's expectations say about the
// instances that were reported with it.
type discrepancies struct {
	// orphans are present but not expected; missing are expected but not
	// present. Both sorted.
	orphans, missing []string
	// terminate are the orphans the server asked to terminate; refused are
	// the instances it asked to terminate that are not orphans (expected, or
	// not here), which the agent leaves alone.
	terminate, refused []string
}

// compare matches the reported instances against the server's answer. It is
// only called when the answer carries expected_instances: without them the
// agent cannot tell an orphan from an instance the server merely did not
// mention, and so judges nothing.
func compare(present []runtime.Instance, expected, terminate []string) discrepancies {
	want := map[string]bool{}
	for _, id := range expected {
		want[id] = true
	}
	here := map[string]bool{}
	var d discrepancies
	for _, inst := range present {
		here[inst.ID] = true
		// Every status counts: an exited instance still holds its
		// container, snapshot and GPUs until it is terminated.
		if !want[inst.ID] {
			d.orphans = append(d.orphans, inst.ID)
		}
	}
	for id := range want {
		if !here[id] {
			d.missing = append(d.missing, id)
		}
	}
	seen := map[string]bool{}
	for _, id := range terminate {
		if seen[id] {
			continue
		}
		seen[id] = true
		if here[id] && !want[id] {
			d.terminate = append(d.terminate, id)
		} else {
			d.refused = append(d.refused, id)
		}
	}
	slices.Sort(d.orphans)
	slices.Sort(d.missing)
	return d
}

// announcer publishes each orphan and missing instance once, when it appears,
// rather than on every heartbeat. Its memory is only that dedupe: losing it
// on restart announces the current discrepancies once more, which is
// harmless.
type announcer struct {
	pub     events.Publisher
	orphans map[string]bool
	missing map[string]bool
}

func newAnnouncer(pub events.Publisher) *announcer {
	return &announcer{pub: pub, orphans: map[string]bool{}, missing: map[string]bool{}}
}

// announce publishes what is new in d and forgets what has been resolved, so
// that an instance that becomes an orphan again is announced again.
func (a *announcer) announce(d discrepancies, present []runtime.Instance) {
	status := map[string]string{}
	for _, inst := range present {
		status[inst.ID] = string(inst.Status)
	}
	a.orphans = a.update(a.orphans, d.orphans, func(id string) events.Event {
		return events.Event{
			Type:       events.TypeInstanceOrphan,
			InstanceID: id,
			Status:     status[id],
			Message:    "instance runs on this host but the central server does not expect it; it is left running unless the server asks to terminate it",
		}
	})
	a.missing = a.update(a.missing, d.missing, func(id string) events.Event {
		return events.Event{
			Type:       events.TypeInstanceMissing,
			InstanceID: id,
			Message:    "the central server expects this instance on this host but the runtime does not have it",
		}
	})
}

func (a *announcer) update(known map[string]bool, now []string, event func(string) events.Event) map[string]bool {
	next := make(map[string]bool, len(now))
	for _, id := range now {
		next[id] = true
		if !known[id] && a.pub != nil {
			a.pub.Publish(event(id))
		}
	}
	return next
}

// terminator runs the terminations the server asked for, each in its own
// goroutine so that a long stop timeout does not delay heartbeats, and at
// most one at a time per instance.
type terminator struct {
	rt      Runtime
	timeout time.Duration
	logger  *slog.Logger

	wg       sync.WaitGroup
	mu       sync.Mutex
	inFlight map[string]bool
}

// start terminates id in the background unless that is already under way.
// The termination ends early when ctx does: the instance then stays, is
// still an orphan, and the server will ask again.
func (t *terminator) start(ctx context.Context, id string) {
	t.mu.Lock()
	if t.inFlight[id] {
		t.mu.Unlock()
		return
	}
	t.inFlight[id] = true
	t.mu.Unlock()

	t.wg.Go(func() {
		defer func() {
			t.mu.Lock()
			delete(t.inFlight, id)
			t.mu.Unlock()
		}()
		t.logger.Warn("terminating orphan instance at the central server's request", "instance_id", id)
		// The runtime waits timeout after SIGTERM; allow it that and a
		// margin for deleting the container.
		ctx, cancel := context.WithTimeout(ctx, t.timeout+time.Minute)
		defer cancel()
		err := t.rt.Terminate(ctx, id, t.timeout)
		switch {
		case err == nil:
			t.logger.Info("orphan instance terminated", "instance_id", id)
		case errdefs.IsNotFound(err):
			// Gone between the heartbeat and now: what was asked is done.
		case errors.Is(err, context.Canceled):
			t.logger.Info("termination of orphan instance interrupted by shutdown", "instance_id", id)
		default:
			t.logger.Error("terminating orphan instance failed", "instance_id", id, "error", err)
		}
	})
}

// wait blocks until every termination started has returned.
func (t *terminator) wait() { t.wg.Wait() }

// reconcile acts on a heartbeat answer's expectations: announce orphans and
// missing instances, and terminate the orphans the answer names.
func (r *Reporter) reconcile(ctx context.Context, snap snapshot, resp HeartbeatResponse) {
	r.pending = discrepancies{}
	if resp.ExpectedInstances == nil {
		if len(resp.Terminate) > 0 {
			r.logger.Warn("heartbeat answer asks for terminations without expected_instances; terminating nothing",
				"terminate", resp.Terminate)
		}
		return
	}
	if snap.listErr != nil {
		// What runs is unknown, so nothing can be judged missing or orphaned.
		return
	}
	d := compare(snap.instances, resp.ExpectedInstances, resp.Terminate)
	var young []string
	d.terminate, young = spareYoung(d.terminate, snap.instances, r.opts.Now(), r.opts.OrphanGrace)
	if len(young) > 0 {
		r.logger.Info("not terminating orphans created within the grace period; the server may not know of them yet",
			"instances", young, "grace", r.opts.OrphanGrace)
	}
	r.pending = d
	r.announcer.announce(d, snap.instances)
	if len(d.refused) > 0 {
		r.logger.Warn("the central server asked to terminate instances that are not orphans; leaving them alone",
			"instances", d.refused)
	}
	for _, id := range d.terminate {
		r.term.start(ctx, id)
	}
}

// spareYoung splits the orphans to terminate into those old enough and those
// created less than grace ago (or in the future, by a clock step), which are
// left alone: an instance the server has just asked for may be listed
// before the server records it, and must not be terminated as an orphan.
func spareYoung(terminate []string, present []runtime.Instance, now time.Time, grace time.Duration) (old, young []string) {
	created := map[string]time.Time{}
	for _, inst := range present {
		created[inst.ID] = inst.CreatedAt
	}
	for _, id := range terminate {
		if c := created[id]; !c.IsZero() && now.Sub(c) < grace {
			young = append(young, id)
			continue
		}
		old = append(old, id)
	}
	return old, young
}
