package events

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type collected struct{ got []Event }

func (c *collected) Publish(e Event) { c.got = append(c.got, e) }

// TestPullTimerTimesPullsAndForwardsEverything: a pull that ends in
// creating counts as ok, one that ends in a failure as error, and every
// event goes on to the next publisher unchanged.
func TestPullTimerTimesPullsAndForwardsEverything(t *testing.T) {
	t.Parallel()
	next := &collected{}
	p := NewPullTimer(next)
	now := time.Unix(0, 0)
	p.now = func() time.Time { now = now.Add(2 * time.Second); return now }
	sent := []Event{
		{Type: TypeInstancePulling, InstanceID: "a"},
		{Type: TypeInstancePulling, InstanceID: "b"},
		{Type: TypeInstanceCreating, InstanceID: "a"},
		{Type: TypeInstanceFailed, InstanceID: "b"},
		{Type: TypeInstanceCreating, InstanceID: "c"}, // no pull: not timed
		{Type: TypeGPUHealth, GPU: "GPU-1"},
	}
	for _, e := range sent {
		p.Publish(e)
	}
	if len(next.got) != len(sent) {
		t.Fatalf("forwarded %d events, want %d", len(next.got), len(sent))
	}
	for i := range sent {
		if next.got[i].Type != sent[i].Type || next.got[i].InstanceID != sent[i].InstanceID {
			t.Errorf("event %d forwarded as %+v, want %+v", i, next.got[i], sent[i])
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(p)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, f := range fams {
		if f.GetName() != "host_agent_image_pull_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			counts[m.GetLabel()[0].GetValue()] = m.GetHistogram().GetSampleCount()
		}
	}
	if len(counts) != 2 || counts["ok"] != 1 || counts["error"] != 1 {
		t.Errorf("pull counts by result = %v, want ok 1, error 1", counts)
	}
}
