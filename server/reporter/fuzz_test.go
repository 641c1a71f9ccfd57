package reporter

import (
	"slices"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

// FuzzHeartbeatResponse: whatever the central server answers, decoding it
// never panics, and what the agent would do on it stays within what the
// protocol allows: it terminates only instances that are here, that the
// same answer's expected_instances leaves out, that the answer names, and
// that are older than the grace period; nothing at all without
// expected_instances.
func FuzzHeartbeatResponse(f *testing.F) {
	for _, seed := range []string{
		``,
		`{}`,
		`null`,
		`{"expected_instances":null,"terminate":["a"]}`,
		`{"expected_instances":[],"terminate":["a","b","young","ghost"]}`,
		`{"expected_instances":["a"],"terminate":["a","b","b"]}`,
		`{"expected_instances":["a","b","young"],"reregister":true}`,
		`{"expected_instances":"a"}`,
		`{"terminate":{"a":1}}`,
		`{"expected_instances":[1,2],"terminate":[null]}`,
		`{"expected_instances":["a"],"expected_instances":[]}`,
		`[]`,
		`{"expected_instances":["\u0000"],"terminate":["\u0000"]}`,
		`<html>502 Bad Gateway</html>`,
	} {
		f.Add([]byte(seed))
	}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	present := []runtime.Instance{
		{ID: "a", Status: runtime.StatusRunning, CreatedAt: now.Add(-time.Hour)},
		{ID: "b", Status: runtime.StatusExited, CreatedAt: now.Add(-time.Hour)},
		{ID: "young", Status: runtime.StatusRunning, CreatedAt: now.Add(-time.Second)},
	}
	const grace = time.Minute
	f.Fuzz(func(t *testing.T, body []byte) {
		resp, err := decodeHeartbeatResponse(body)
		if err != nil {
			if resp.ExpectedInstances != nil || resp.Terminate != nil || resp.Reregister {
				t.Fatalf("an undecodable answer kept content: %+v", resp)
			}
			return
		}
		if resp.ExpectedInstances == nil {
			// reconcile returns before judging anything.
			return
		}
		d := compare(present, resp.ExpectedInstances, resp.Terminate)
		old, young := spareYoung(d.terminate, present, now, grace)
		here := map[string]runtime.Instance{}
		for _, inst := range present {
			here[inst.ID] = inst
		}
		seen := map[string]bool{}
		for _, id := range old {
			inst, ok := here[id]
			switch {
			case !ok:
				t.Fatalf("would terminate %q, which is not here", id)
			case slices.Contains(resp.ExpectedInstances, id):
				t.Fatalf("would terminate %q, which the server expects", id)
			case !slices.Contains(resp.Terminate, id):
				t.Fatalf("would terminate %q, which the server did not name", id)
			case now.Sub(inst.CreatedAt) < grace:
				t.Fatalf("would terminate %q inside the grace period", id)
			case seen[id]:
				t.Fatalf("would terminate %q twice", id)
			}
			seen[id] = true
		}
		if len(old)+len(young) != len(d.terminate) {
			t.Fatalf("spareYoung lost instances: %v + %v from %v", old, young, d.terminate)
		}
		for _, inst := range present {
			orphan := slices.Contains(d.orphans, inst.ID)
			if orphan == slices.Contains(resp.ExpectedInstances, inst.ID) {
				t.Fatalf("%q: orphan %v, expected %v", inst.ID, orphan, !orphan)
			}
		}
		for _, id := range d.missing {
			if _, ok := here[id]; ok || !slices.Contains(resp.ExpectedInstances, id) {
				t.Fatalf("%q reported missing wrongly", id)
			}
		}
	})
}
