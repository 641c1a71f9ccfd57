package reporter

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

func instancesNamed(ids ...string) []runtime.Instance {
	var out []runtime.Instance
	for _, id := range ids {
		out = append(out, runtime.Instance{ID: id, Status: runtime.StatusRunning})
	}
	return out
}

func TestCompare(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                                   string
		present, expected, terminate           []string
		orphans, missing, toTerminate, refused []string
	}{
		{name: "in agreement", present: []string{"a", "b"}, expected: []string{"b", "a"}},
		{name: "orphan and missing", present: []string{"a", "x"}, expected: []string{"a", "c"},
			orphans: []string{"x"}, missing: []string{"c"}},
		{name: "nothing expected", present: []string{"b", "a"}, expected: []string{},
			orphans: []string{"a", "b"}},
		{name: "terminate an orphan", present: []string{"a", "x"}, expected: []string{"a"}, terminate: []string{"x", "x"},
			orphans: []string{"x"}, toTerminate: []string{"x"}},
		{name: "terminate an expected one", present: []string{"a", "x"}, expected: []string{"a"}, terminate: []string{"a"},
			orphans: []string{"x"}, refused: []string{"a"}},
		{name: "terminate one not here", present: []string{"a"}, expected: []string{"a", "c"}, terminate: []string{"c", "z"},
			missing: []string{"c"}, refused: []string{"c", "z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := compare(instancesNamed(tc.present...), tc.expected, tc.terminate)
			for _, c := range []struct {
				what      string
				got, want []string
			}{
				{"orphans", d.orphans, tc.orphans},
				{"missing", d.missing, tc.missing},
				{"terminate", d.terminate, tc.toTerminate},
				{"refused", d.refused, tc.refused},
			} {
				if !slices.Equal(c.got, c.want) {
					t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
				}
			}
		})
	}
}

func TestAnnouncerPublishesEachChangeOnce(t *testing.T) {
	t.Parallel()
	pub := &publisher{}
	a := newAnnouncer(pub)
	present := instancesNamed("a", "x")
	steps := []discrepancies{
		{orphans: []string{"x"}, missing: []string{"c"}},
		{orphans: []string{"x"}, missing: []string{"c"}}, // unchanged: nothing new
		{},                       // resolved
		{orphans: []string{"x"}}, // back again: announced again
	}
	for _, d := range steps {
		a.announce(d, present)
	}
	var got []string
	for _, e := range pub.events {
		got = append(got, e.Type+" "+e.InstanceID)
	}
	want := []string{events.TypeInstanceOrphan + " x", events.TypeInstanceMissing + " c", events.TypeInstanceOrphan + " x"}
	if !slices.Equal(got, want) {
		t.Errorf("events = %v, want %v", got, want)
	}
	// A nil publisher is allowed.
	newAnnouncer(nil).announce(steps[0], present)
}

func TestOrphansAndMissingAreReportedOnce(t *testing.T) {
	t.Parallel()
	instances := append(testInstances(), runtime.Instance{ID: "x", ContainerID: "x", Status: runtime.StatusRunning})
	h := newHarness(t, func(_ int, kind string) answer {
		if kind == "heartbeat" {
			return answer{status: http.StatusOK, body: `{"expected_instances":["a","b","c"]}`}
		}
		return answerOK
	}, instances...)
	h.run(h.options(), h.heartbeatsAtLeast(4))

	orphans, missing := h.pub.ofType(events.TypeInstanceOrphan), h.pub.ofType(events.TypeInstanceMissing)
	if len(orphans) != 1 || orphans[0].InstanceID != "x" || orphans[0].Status != "running" {
		t.Errorf("orphan events = %+v, want one for x", orphans)
	}
	if len(missing) != 1 || missing[0].InstanceID != "c" {
		t.Errorf("missing events = %+v, want one for c", missing)
	}
	hbs := h.server.ofKind("heartbeat")
	if first := hbs[0].heartbeat(t); len(first.Orphans) != 0 || len(first.Missing) != 0 {
		t.Errorf("first heartbeat reports %v %v before any expectation was known", first.Orphans, first.Missing)
	}
	for _, c := range hbs[1:] {
		hb := c.heartbeat(t)
		if !slices.Equal(hb.Orphans, []string{"x"}) || !slices.Equal(hb.Missing, []string{"c"}) {
			t.Errorf("heartbeat orphans %v missing %v, want [x] [c]", hb.Orphans, hb.Missing)
		}
	}
	if got := h.rt.terminateCalls(); len(got) != 0 {
		t.Errorf("an orphan was terminated without the server asking: %v", got)
	}
}

func TestOrphanTerminatedOnlyOnTheServersWord(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		body string
		want []string
	}{
		{"asked for an orphan", `{"expected_instances":["a","b"],"terminate":["x"]}`, []string{"x"}},
		{"merely an orphan", `{"expected_instances":["a","b"]}`, nil},
		{"asked for an expected instance", `{"expected_instances":["a","b","x"],"terminate":["x","a"]}`, nil},
		{"asked without expected_instances", `{"terminate":["x"]}`, nil},
		{"asked with expected_instances null", `{"expected_instances":null,"terminate":["x"]}`, nil},
		{"asked for an instance not here", `{"expected_instances":["a","b"],"terminate":["zz"]}`, nil},
		{"nothing expected, one asked for", `{"expected_instances":[],"terminate":["x"]}`, []string{"x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			instances := append(testInstances(), runtime.Instance{ID: "x", ContainerID: "x", Status: runtime.StatusRunning})
			h := newHarness(t, func(_ int, kind string) answer {
				if kind == "heartbeat" {
					return answer{status: http.StatusOK, body: tc.body}
				}
				return answerOK
			}, instances...)
			h.run(h.options(), h.heartbeatsAtLeast(3))
			// Run has returned, so every termination it started is done.
			if got := h.rt.terminated(); !slices.Equal(got, tc.want) {
				t.Errorf("terminated %v, want %v", got, tc.want)
			}
			if tc.want == nil && len(h.rt.terminateCalls()) != 0 {
				t.Errorf("Terminate called for %v", h.rt.terminateCalls())
			}
		})
	}
}

func TestExplicitlyEmptyExpectationsMakeEveryInstanceAnOrphan(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(_ int, kind string) answer {
		if kind == "heartbeat" {
			return answer{status: http.StatusOK, body: `{"expected_instances":[]}`}
		}
		return answerOK
	}, testInstances()...)
	h.run(h.options(), h.heartbeatsAtLeast(2))
	hb := h.server.ofKind("heartbeat")[1].heartbeat(t)
	if !slices.Equal(hb.Orphans, []string{"a", "b"}) || len(h.pub.ofType(events.TypeInstanceOrphan)) != 2 {
		t.Errorf("orphans %v, events %v", hb.Orphans, h.pub.ofType(events.TypeInstanceOrphan))
	}
	if got := h.rt.terminateCalls(); len(got) != 0 {
		t.Errorf("terminated %v without being asked", got)
	}
}

func TestUnlistableRuntimeIsReportedAsUnknown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(_ int, kind string) answer {
		if kind == "heartbeat" {
			return answer{status: http.StatusOK, body: `{"expected_instances":["a"],"terminate":["x"]}`}
		}
		return answerOK
	})
	h.rt.listErr = errdefs.ErrUnavailable.WithMessage("containerd is down")
	h.run(h.options(), h.heartbeatsAtLeast(2))
	for _, c := range h.server.ofKind("heartbeat") {
		hb := c.heartbeat(t)
		if hb.Instances != nil || !strings.Contains(hb.RuntimeError, "containerd is down") ||
			!strings.Contains(string(c.Body), `"instances":null`) {
			t.Errorf("heartbeat = %s, want instances null with the runtime error", c.Body)
		}
		if len(hb.Missing) != 0 {
			t.Errorf("missing = %v while nothing could be listed", hb.Missing)
		}
	}
	if ev := h.pub.ofType(events.TypeInstanceMissing); len(ev) != 0 {
		t.Errorf("missing events %v while nothing could be listed", ev)
	}
	if got := h.rt.terminateCalls(); len(got) != 0 {
		t.Errorf("terminated %v", got)
	}
}

// Defect 9: an instance listed before the heartbeat but not yet known to
// the server is not terminated as an orphan within the grace period after
// its creation.
func TestDefect9OrphanGraceSparesStartingInstances(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	present := []runtime.Instance{
		{ID: "just-started", Status: runtime.StatusRunning, CreatedAt: now.Add(-5 * time.Second)},
		{ID: "old-orphan", Status: runtime.StatusRunning, CreatedAt: now.Add(-time.Hour)},
		{ID: "expected", Status: runtime.StatusRunning, CreatedAt: now.Add(-time.Hour)},
	}
	d := compare(present, []string{"expected"}, []string{"just-started", "old-orphan"})
	old, young := spareYoung(d.terminate, present, now, time.Minute)
	if !slices.Equal(old, []string{"old-orphan"}) || !slices.Equal(young, []string{"just-started"}) {
		t.Fatalf("terminate %v, spared %v; want [old-orphan], [just-started]", old, young)
	}
}
