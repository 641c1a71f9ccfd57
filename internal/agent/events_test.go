package agent

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/host-agent/host-agent/runtime/events"
)

// TestLifecycleEventsAreTimedWithThePulls: the lifecycle publishes a
// start's instance.failed (a failed pull among them) and a terminate's
// instance.terminated, so it publishes through the pull timer, as the back
// end does: a pull the back end began and the lifecycle reported failed
// is observed as an error, and the timer forgets it.
func TestLifecycleEventsAreTimedWithThePulls(t *testing.T) {
	t.Parallel()
	ev := NewEvents(16)
	ev.Pulls.Publish(events.Event{Type: events.TypeInstancePulling, InstanceID: "a"})
	ev.publisher().Publish(events.Event{Type: events.TypeInstanceFailed, InstanceID: "a", Step: "pull"})
	ev.Pulls.Publish(events.Event{Type: events.TypeInstancePulling, InstanceID: "b"})
	ev.publisher().Publish(events.Event{Type: events.TypeInstanceTerminated, InstanceID: "b"})
	reg := prometheus.NewRegistry()
	reg.MustRegister(ev.Pulls)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got uint64
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == "error" {
					got = m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	if got != 2 {
		t.Errorf("%v failed pulls observed, want 2 (one failed, one called off by a terminate)", got)
	}
}
