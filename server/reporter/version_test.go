package reporter

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestHostReportCarriesVersionAndCommit(t *testing.T) {
	t.Parallel()
	r, err := New(Options{Runtime: newFakeRuntime(), DataDir: t.TempDir(), AgentID: "h", Version: "1.2.3", Commit: "abc123"})
	if err != nil {
		t.Fatal(err)
	}
	rep, _ := r.Collect(context.Background())
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"agent_version":"1.2.3"`, `"agent_commit":"abc123"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("host report lacks %s: %s", want, b)
		}
	}
}

// drainedState is a DrainState that says what the test sets.
type drainedState struct {
	reason string
	since  time.Time
}

func (d *drainedState) Drained(context.Context) (string, time.Time, bool, error) {
	return d.reason, d.since, d.reason != "", nil
}

// TestHeartbeatAndReportCarryDrain: a drained host says so in its
// registration's host report and in every heartbeat.
func TestHeartbeatAndReportCarryDrain(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, testInstances()...)
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	opts := h.options()
	opts.Drain = &drainedState{reason: "maintenance", since: since}
	h.run(opts, h.heartbeatsAtLeast(1))
	calls := h.server.recorded()
	if d := calls[0].register(t).Host.Drain; d == nil || d.Reason != "maintenance" || !d.Since.Equal(since) {
		t.Errorf("registration's drain = %+v", d)
	}
	for _, c := range calls[1:] {
		if d := c.heartbeat(t).Drain; d == nil || d.Reason != "maintenance" {
			t.Errorf("heartbeat's drain = %+v", d)
		}
	}
}
