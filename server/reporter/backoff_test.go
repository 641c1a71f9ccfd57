package reporter

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoffCeilingDoublesUpToTheCap(t *testing.T) {
	t.Parallel()
	b := Backoff{Base: time.Second, Max: 60 * time.Second}.withDefaults()
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for i, w := range want {
		if got := b.ceiling(i + 1); got != w*time.Second {
			t.Errorf("ceiling(%d) = %v, want %v", i+1, got, w*time.Second)
		}
	}
	// No overflow however long the outage.
	if got := b.ceiling(1 << 20); got != 60*time.Second {
		t.Errorf("ceiling after a very long outage = %v", got)
	}
}

func TestBackoffJitterSpreadsAgents(t *testing.T) {
	t.Parallel()
	// Many agents failing together, each with its own randomness, must not
	// come back at the same moment.
	src := rand.New(rand.NewPCG(7, 7))
	b := Backoff{Rand: src.Float64}.withDefaults()
	const agents = 10000
	var buckets [10]int
	seen := map[time.Duration]bool{}
	for range agents {
		d := b.delay(20)
		if d < 0 || d >= DefaultBackoffMax {
			t.Fatalf("delay %v outside [0, %v)", d, DefaultBackoffMax)
		}
		seen[d] = true
		buckets[int(d*10/DefaultBackoffMax)]++
	}
	if len(seen) < agents/2 {
		t.Errorf("only %d distinct delays among %d agents", len(seen), agents)
	}
	// Full jitter is uniform: no tenth of the window holds more than
	// a modest excess over its share.
	for i, n := range buckets {
		if n > agents/10*13/10 {
			t.Errorf("bucket %d holds %d of %d agents", i, n, agents)
		}
	}
}

func TestBackoffDefaultsAndBadRand(t *testing.T) {
	t.Parallel()
	b := Backoff{Rand: func() float64 { return 1.5 }}.withDefaults()
	if b.Base != DefaultBackoffBase || b.Max != DefaultBackoffMax || b.SlowRetry != DefaultSlowRetry {
		t.Errorf("defaults = %+v", b)
	}
	if d := b.delay(3); d != 0 {
		t.Errorf("delay with an out-of-range rand = %v, want 0", d)
	}
	if b := (Backoff{Base: time.Minute, Max: time.Second}).withDefaults(); b.Max != time.Minute {
		t.Errorf("Max below Base = %v, want raised to Base", b.Max)
	}
}

// TestBackoffCeilingNeverOverflows: with a cap near the largest Duration the
// doubling must stop at the cap rather than wrap negative, which would make
// every retry immediate.
func TestBackoffCeilingNeverOverflows(t *testing.T) {
	t.Parallel()
	for _, b := range []Backoff{
		{Base: time.Second, Max: math.MaxInt64},
		{Base: 3 * time.Second, Max: math.MaxInt64 - 1},
		{Base: time.Duration(1) << 62, Max: math.MaxInt64},
	} {
		b = b.withDefaults()
		prev := time.Duration(0)
		for n := 1; n <= 200; n++ {
			c := b.ceiling(n)
			if c < prev || c <= 0 || c > b.Max {
				t.Fatalf("%+v: ceiling(%d) = %v after %v, want growing within (0, %v]", b, n, c, prev, b.Max)
			}
			prev = c
		}
		if got := b.ceiling(200); got != b.Max {
			t.Errorf("%+v: ceiling(200) = %v, want the cap", b, got)
		}
		b.Rand = func() float64 { return 0.5 }
		if d := b.delay(200); d <= 0 {
			t.Errorf("%+v: delay(200) = %v, want positive", b, d)
		}
	}
}
