package reporter

import (
	"math/rand/v2"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

// backoffRand returns jitter fractions in [0.5, 1), so that every wait lies
// in the upper half of its ceiling and growth is visible, from a fixed seed.
func backoffRand() func() float64 {
	r := rand.New(rand.NewPCG(1, 2))
	return func() float64 { return 0.5 + r.Float64()/2 }
}

func TestOutageKeepsInstancesAndResendsStateOnRecovery(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		fail answer
	}{
		{"503", answer{status: http.StatusServiceUnavailable}},
		{"429", answer{status: http.StatusTooManyRequests}},
		{"connection dropped", answer{drop: true}},
		{"no answer in time", answer{stall: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const failing = 9
			rt := newFakeRuntime(testInstances()...)
			h := newHarness(t, func(n int, _ string) answer {
				if n < 2 || n >= 2+failing {
					return answerOK
				}
				if n == 2 {
					// During the outage instance a exits.
					rt.set(runtime.Instance{ID: "a", ContainerID: "a", Status: runtime.StatusExited, ExitCode: intp(0)},
						testInstances()[1])
				}
				return tc.fail
			})
			h.rt = rt
			opts := h.options()
			opts.RequestTimeout = 250 * time.Millisecond
			opts.Backoff = Backoff{Base: time.Second, Max: 16 * time.Second, Rand: backoffRand()}
			waits := h.run(opts, h.heartbeatsAtLeast(3))

			if got := rt.terminateCalls(); len(got) != 0 {
				t.Fatalf("Terminate called during an outage: %v", got)
			}
			if len(waits) != failing+3 {
				t.Fatalf("waits = %v, want interval, %d backoffs, interval, interval", waits, failing)
			}
			backoffs := waits[1 : 1+failing]
			for i, w := range backoffs {
				ceiling := min(time.Second<<i, 16*time.Second)
				if w < ceiling/2 || w >= ceiling {
					t.Errorf("backoff %d = %v, want in [%v, %v)", i+1, w, ceiling/2, ceiling)
				}
			}
			// Growth: ceilings double, so each wait exceeds the one two
			// before until the cap.
			for i := 2; i < 5; i++ {
				if backoffs[i] <= backoffs[i-2] {
					t.Errorf("backoffs do not grow: %v", backoffs)
				}
			}
			capped := backoffs[4:]
			if slices.Min(capped) == slices.Max(capped) {
				t.Errorf("backoffs at the cap are all %v: no jitter", capped[0])
			}
			if waits[0] != opts.Interval || waits[failing+1] != opts.Interval {
				t.Errorf("waits around the outage = %v, %v, want the interval", waits[0], waits[failing+1])
			}

			calls := h.server.recorded()
			// Retries during the outage are registrations: no heartbeat
			// goes out before the agent registered again.
			for _, c := range calls[3 : 2+failing] {
				if c.Kind != "register" {
					t.Fatalf("calls during the outage = %v", kinds(calls))
				}
			}
			if reg := calls[2+failing].register(t); reg.Reason != ReasonReconnect {
				t.Errorf("registration after the outage has reason %q", reg.Reason)
			}
			hb := calls[3+failing].heartbeat(t)
			a := byID(hb)["a"]
			if a.Status != "exited" || a.ExitCode == nil || *a.ExitCode != 0 || len(hb.Instances) != 2 {
				t.Errorf("heartbeat after the outage = %+v, want a's exit", hb.Instances)
			}
			if n := h.logs.count("level=WARN", "central server unreachable"); n != 1 {
				t.Errorf("outage warned %d times, want once", n)
			}
			if n := h.logs.count("level=INFO", "central server reachable again"); n != 1 {
				t.Errorf("recovery logged %d times, want once", n)
			}
		})
	}
}

func TestRefusedRetriesSlowlyAndLogsOnce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		status    int
		from      int // first failing call
		slow      time.Duration
		wantWait  time.Duration
		wantError string
	}{
		{"401 at start", http.StatusUnauthorized, 0, 0, DefaultSlowRetry, "refuses the agent's token"},
		{"403 after registering", http.StatusForbidden, 2, 2 * time.Minute, 2 * time.Minute, "refuses the agent's token"},
		{"400", http.StatusBadRequest, 0, 0, DefaultSlowRetry, "refuses the agent's requests"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const failing = 3
			h := newHarness(t, func(n int, _ string) answer {
				if n >= tc.from && n < tc.from+failing {
					return answer{status: tc.status, body: `{"error":"nope"}`}
				}
				return answerOK
			}, testInstances()...)
			opts := h.options()
			opts.Backoff.SlowRetry = tc.slow
			waits := h.run(opts, h.heartbeatsAtLeast(2))

			var slow int
			for _, w := range waits {
				switch w {
				case tc.wantWait:
					slow++
				case opts.Interval:
				default:
					t.Errorf("wait %v, want only %v and the interval", w, tc.wantWait)
				}
			}
			if slow != failing {
				t.Errorf("waits = %v, want %d slow retries", waits, failing)
			}
			if n := h.logs.count("level=ERROR", tc.wantError); n != 1 {
				t.Errorf("error logged %d times, want once per streak:\n%s", n, h.logs)
			}
			if got := h.rt.terminateCalls(); len(got) != 0 {
				t.Errorf("Terminate called: %v", got)
			}
		})
	}
}
