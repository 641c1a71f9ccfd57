package reporter

import (
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// Every round's outcome reaches ObserveHeartbeat, classified into the fixed
// set of results, with the time it ended.
func TestObserveHeartbeatResults(t *testing.T) {
	t.Parallel()
	// Calls from 0: register, heartbeat (ok); then one failure of each
	// kind, each followed by a registration and a heartbeat that succeed.
	failures := map[int]answer{
		2:  {status: http.StatusServiceUnavailable},
		5:  {status: http.StatusUnauthorized},
		8:  {status: http.StatusBadRequest},
		11: {status: http.StatusNotFound},
	}
	h := newHarness(t, func(n int, _ string) answer {
		if a, ok := failures[n]; ok {
			return a
		}
		return answerOK
	})
	var mu sync.Mutex
	var got []string
	var stamps []time.Time
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	opts := h.options()
	opts.Now = func() time.Time { return clock }
	opts.ObserveHeartbeat = func(result string, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, result)
		stamps = append(stamps, at)
	}
	h.run(opts, func(round int) bool { return round == 9 })

	mu.Lock()
	defer mu.Unlock()
	// The heartbeat answered 404 is failure 11; the register at 2, 5 and 8
	// fail the round before its heartbeat is sent.
	want := []string{HeartbeatOK, HeartbeatUnreachable, HeartbeatOK, HeartbeatUnauthorized, HeartbeatOK,
		HeartbeatRejected, HeartbeatOK, HeartbeatUnknownAgent, HeartbeatOK}
	if !slices.Equal(got, want) {
		t.Fatalf("results = %v, want %v (calls %v)", got, want, h.server.recorded())
	}
	for _, r := range got {
		if !slices.Contains(HeartbeatResults, r) {
			t.Errorf("result %q is not in HeartbeatResults", r)
		}
	}
	for _, at := range stamps {
		if !at.Equal(clock) {
			t.Errorf("observed at %v, want the reporter's clock %v", at, clock)
		}
	}
}
