package backend

import (
	"errors"
	"io"
	"log/slog"
	"testing"
)

func TestRaiseProbeKeepsAnswers(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p := &RaiseProbe{}
	calls := 0
	failing := func() (bool, error) { calls++; return false, errors.New("runtime down") }
	if p.CanRaise(log, "runtime", failing) || p.CanRaise(log, "runtime", failing) || calls != 2 {
		t.Fatalf("a failing probe: %d calls, want 2 answers of no", calls)
	}
	yes := func() (bool, error) { calls++; return true, nil }
	if !p.CanRaise(log, "runtime", yes) || !p.CanRaise(log, "runtime", yes) || calls != 3 {
		t.Fatalf("a probe saying yes: %d calls, want it asked once", calls)
	}
}

// rtprio is refused unless 0: real-time scheduling escapes cgroups' CPU
// limits. nice and rttime stay allowed, like the other limits.
