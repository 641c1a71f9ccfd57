package lifecycle_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// drainState is a host's drained state kept in memory.
type drainState struct {
	mu     sync.Mutex
	reason string
}

func (d *drainState) set(reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reason = reason
}

func (d *drainState) Drained(context.Context) (string, time.Time, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reason, time.Time{}, d.reason != "", nil
}

// countingKind counts the reservations a start makes.
type countingKind struct {
	mu       sync.Mutex
	reserved int
}

func (*countingKind) Name() string { return "counted" }
func (k *countingKind) Reserve(*runtime.InstanceSpec) (map[string]string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.reserved++
	return nil, nil
}
func (*countingKind) Release(string)                          {}
func (*countingKind) Restore(string, map[string]string) error { return nil }
func (*countingKind) Holdings() map[string]map[string]string  { return nil }
func (*countingKind) Records(string) bool                     { return false }
func (k *countingKind) count() int                            { k.mu.Lock(); defer k.mu.Unlock(); return k.reserved }

type eventList struct {
	mu  sync.Mutex
	got []events.Event
}

func (e *eventList) Publish(ev events.Event) { e.mu.Lock(); e.got = append(e.got, ev); e.mu.Unlock() }

// TestDrainedHostRefusesNewInstancesOnly: the lifecycle owns the drain's
// admission. On a drained host a new instance is refused with
// runtime.DrainingError before anything is reserved or created, and
// without an instance.failed event (a pre-pull too: the server's
// images tests); a repeated start of an instance that
// exists goes through (the retry of a start accepted before the drain);
// once undrained, new instances start again.
func TestDrainedHostRefusesNewInstancesOnly(t *testing.T) {
	t.Parallel()
	be := newFakeBackend(nil)
	drain := &drainState{}
	kind := &countingKind{}
	pub := &eventList{}
	l := lifecycle.New(be, lifecycle.Options{Kinds: []runtime.Admission{kind}, Drain: drain, Events: pub, ReconcileInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Cleanup(func() { l.Close() })
	ctx := context.Background()
	old := runtime.InstanceSpec{ID: "old", Image: "busybox"}
	if _, err := l.Start(ctx, old); err != nil {
		t.Fatal(err)
	}
	drain.set("kernel upgrade")
	_, err := l.Start(ctx, runtime.InstanceSpec{ID: "new", Image: "busybox"})
	var de *runtime.DrainingError
	if !errors.As(err, &de) || de.Reason != "kernel upgrade" {
		t.Fatalf("new start on a drained host: %v, want a DrainingError naming the reason", err)
	}
	if _, err := l.Get(ctx, "new"); err == nil {
		t.Error("a refused start left a container")
	}
	if kind.count() != 1 {
		t.Errorf("%d reservations, want only the first start's", kind.count())
	}
	if _, err := l.Start(ctx, old); err != nil {
		t.Errorf("repeated start of an existing instance on a drained host: %v", err)
	}
	pub.mu.Lock()
	for _, e := range pub.got {
		if e.InstanceID == "new" {
			t.Errorf("refused start published %+v", e)
		}
	}
	pub.mu.Unlock()
	drain.set("")
	if _, err := l.Start(ctx, runtime.InstanceSpec{ID: "new", Image: "busybox"}); err != nil {
		t.Errorf("start after undrain: %v", err)
	}
}
