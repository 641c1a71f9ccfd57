package reporter

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff defaults.
const (
	DefaultBackoffBase = time.Second
	DefaultBackoffMax  = 60 * time.Second
	DefaultSlowRetry   = 5 * time.Minute
)

// Backoff says how long the reporter waits after failed calls. Zero fields
// take the defaults.
//
// After the n-th consecutive outage failure it waits a uniformly random time
// in [0, min(Max, Base·2^(n-1))) ("full jitter"). The randomness matters more
// than the growth: when the central server comes back after an outage, ten
// thousand agents that failed together must not all call again in the same
// second.
type Backoff struct {
	// Base is the ceiling of the first wait; default 1s.
	Base time.Duration
	// Max caps the ceiling; default 60s.
	Max time.Duration
	// SlowRetry is the wait after the server refused the agent (401, 403 or
	// another 4xx), where retrying sooner would only flood its logs; default
	// 5 minutes.
	SlowRetry time.Duration
	// Rand returns a number in [0, 1); default math/rand/v2's Float64. Tests
	// inject it to make the jitter deterministic.
	Rand func() float64
}

func (b Backoff) withDefaults() Backoff {
	if b.Base <= 0 {
		b.Base = DefaultBackoffBase
	}
	if b.Max <= 0 {
		b.Max = DefaultBackoffMax
	}
	if b.Max < b.Base {
		b.Max = b.Base
	}
	if b.SlowRetry <= 0 {
		b.SlowRetry = DefaultSlowRetry
	}
	if b.Rand == nil {
		b.Rand = rand.Float64
	}
	return b
}

// ceiling is the upper bound of the wait after the n-th consecutive failure
// (n >= 1), doubling from Base up to Max.
func (b Backoff) ceiling(n int) time.Duration {
	c := b.Base
	for i := 1; i < n && c < b.Max; i++ {
		if c > b.Max/2 {
			// Doubling would pass the cap, or overflow near the
			// largest Duration.
			return b.Max
		}
		c *= 2
	}
	return min(c, b.Max)
}

// delay is the jittered wait after the n-th consecutive failure.
func (b Backoff) delay(n int) time.Duration {
	f := b.Rand()
	if f < 0 || f >= 1 {
		f = 0
	}
	return time.Duration(f * float64(b.ceiling(n)))
}

// sleepContext waits d or until ctx is done, whichever comes first, and says
// which.
func sleepContext(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
