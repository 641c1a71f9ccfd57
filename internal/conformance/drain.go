package conformance

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// drainKeeper is a back end that keeps the host's drained state.
type drainKeeper interface {
	runtime.DrainState
	SetDrain(ctx context.Context, reason string, at time.Time) error
	ClearDrain(ctx context.Context) error
}

// testDrain: a drained host, its state kept by the back end, refuses a new
// rental (runtime.DrainingError, nothing created) while a repeated start
// of a rental accepted before the drain goes through; the state outlives
// the agent (a second back end over the same runtime reads it back), and
// undrained, the host takes new rentals again.
func testDrain(t *testing.T, h Harness) {
	sc := h.NewScope(t)
	open := func() (*lifecycle.Lifecycle, drainKeeper) {
		be := sc.Open(t, NewRecorder(), nil)
		d, ok := be.(drainKeeper)
		if !ok {
			t.Fatalf("the %s back end keeps no drained state", h.Name)
		}
		l := lifecycle.New(be, lifecycle.Options{Drain: d, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		t.Cleanup(func() { l.Close() })
		return l, d
	}
	l, d := open()
	old := spec(h, uniqueID(t, "before"), "sleep", "inf")
	if _, err := l.Start(Ctx(t), old); err != nil {
		t.Fatal(err)
	}
	if err := d.SetDrain(Ctx(t), "kernel upgrade", time.Now()); err != nil {
		t.Fatal(err)
	}
	l, d = open()
	fresh := spec(h, uniqueID(t, "during"), "sleep", "inf")
	_, err := l.Start(Ctx(t), fresh)
	var de *runtime.DrainingError
	if !errors.As(err, &de) || de.Reason != "kernel upgrade" {
		t.Fatalf("new start on a drained host, after an agent restart: %v, want a DrainingError naming the reason", err)
	}
	assertGone(t, &Agent{Lifecycle: l}, fresh.ID)
	if _, err := l.Start(Ctx(t), old); err != nil {
		t.Errorf("repeated start of a rental accepted before the drain: %v", err)
	}
	if err := d.ClearDrain(Ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Start(Ctx(t), fresh); err != nil {
		t.Fatalf("start after undrain: %v", err)
	}
	for _, id := range []string{old.ID, fresh.ID} {
		if err := l.Terminate(Ctx(t), id, time.Second); err != nil {
			t.Error(err)
		}
	}
}
