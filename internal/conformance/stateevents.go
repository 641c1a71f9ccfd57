package conformance

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// testStateEventsOnce: the lifecycle is the one publisher of a rental's
// state events and the back end publishes only what only it sees, so on
// every runtime a start publishes one instance.running (a repeated start
// none), two concurrent terminates one instance.terminating, one
// instance.exited with the exit code (the back end's: only it sees the
// exit, but a terminate returns once it is out, so that a terminated
// rental's exit is never lost with its container) and one
// instance.terminated, in that order, and a failed start one
// instance.failed and no instance.running. A back end publishing a state
// event of its own as well shows here as a second event.
func testStateEventsOnce(t *testing.T, h Harness) {
	a := open(t, h.NewScope(t), nil)
	id := uniqueID(t, "once")
	s := spec(h, id, "sleep", "inf")
	for range 2 {
		if _, err := a.Start(Ctx(t), s); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for typ, want := range map[string]int{
		events.TypeInstanceRunning:     1,
		events.TypeInstanceTerminating: 1,
		events.TypeInstanceExited:      1,
		events.TypeInstanceTerminated:  1,
		events.TypeInstanceFailed:      0,
	} {
		if n := a.Events.Count(id, typ); n != want {
			t.Errorf("%d %s events, want %d; got %s", n, typ, want, a.Events.Summary())
		}
	}
	var order []string
	for _, e := range a.Events.All() {
		switch {
		case e.InstanceID != id:
		case e.Type == events.TypeInstanceExited:
			if e.ExitCode == nil {
				t.Errorf("the terminated rental's instance.exited has no exit code: %+v", e)
			}
			order = append(order, e.Type)
		case e.Type == events.TypeInstanceRunning, e.Type == events.TypeInstanceTerminating, e.Type == events.TypeInstanceTerminated:
			order = append(order, e.Type)
		}
	}
	if want := []string{events.TypeInstanceRunning, events.TypeInstanceTerminating, events.TypeInstanceExited, events.TypeInstanceTerminated}; !slices.Equal(order, want) {
		t.Errorf("state events in the order %v, want %v", order, want)
	}

	failed := uniqueID(t, "fails")
	if _, err := a.Start(Ctx(t), runtime.InstanceSpec{ID: failed, Image: h.Registry.Host + "/missing:nope"}); err == nil {
		t.Fatal("start of a missing image succeeded")
	}
	if n := a.Events.Count(failed, events.TypeInstanceFailed); n != 1 {
		t.Errorf("%d instance.failed events for one failed start, want 1; got %s", n, a.Events.Summary())
	}
	if n := a.Events.Count(failed, events.TypeInstanceRunning); n != 0 {
		t.Errorf("a failed start published instance.running; got %s", a.Events.Summary())
	}
}
