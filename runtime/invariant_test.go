package runtime_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// The invariant test runs a short, seeded random schedule in CI. Locally,
// run it long:
//
//	go test -race ./runtime -run TestLifecycleInvariants -invariant.rounds=2000
//
// or with HOST_AGENT_INVARIANT_ROUNDS=2000; a failure prints the seed, which
// -invariant.seed=N (or HOST_AGENT_INVARIANT_SEED) replays.
var (
	invariantSeed   = flag.Uint64("invariant.seed", 0, "seed of the lifecycle invariant test (0: from the clock)")
	invariantRounds = flag.Int("invariant.rounds", 0, "rounds of the lifecycle invariant test (0: a short run, or HOST_AGENT_INVARIANT_ROUNDS)")
)

// InvariantParams returns the seed and number of rounds to run, from the
// flags, then the environment, then the defaults (a fresh seed, short).
func invariantParams(t testing.TB, short int) (seed uint64, rounds int) {
	seed, rounds = *invariantSeed, *invariantRounds
	if seed == 0 {
		if v, err := strconv.ParseUint(os.Getenv("HOST_AGENT_INVARIANT_SEED"), 10, 64); err == nil {
			seed = v
		}
	}
	if rounds == 0 {
		if v, err := strconv.Atoi(os.Getenv("HOST_AGENT_INVARIANT_ROUNDS")); err == nil && v > 0 {
			rounds = v
		}
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	if rounds == 0 {
		rounds = short
	}
	t.Logf("invariant test: seed %d, %d rounds (replay with -invariant.seed=%d)", seed, rounds, seed)
	return seed, rounds
}

// lockedRand is a seeded source shared by goroutines. Under concurrency the
// interleaving is the scheduler's, so a seed replays the same operations and
// injected faults, not necessarily the same interleaving; it still finds
// the same bug far more often than not.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) IntN(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.IntN(n)
}

// TestLifecycleInvariants sends random starts (fresh, retried,
// conflicting, with and without GPUs), terminates with short caller
// deadlines, reconciles and agent restarts against a back end that injects
// failures and delays at every step. After every operation: no GPU is
// recorded on two existing containers, and each container's GPUs are what
// the allocator holds for it. After every round, once the detached work has
// settled: no reservation without its container, no lease left, and the back
// end was never called twice at once for one instance.
func TestLifecycleInvariants(t *testing.T) {
	t.Parallel()
	seed, rounds := invariantParams(t, 30)
	rnd := &lockedRand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d: %s", seed, fmt.Sprintf(format, args...))
	}

	be := newFakeBackend(func(ctx context.Context, step, id string) error {
		if d := rnd.IntN(4); d > 0 {
			select {
			case <-time.After(time.Duration(rnd.IntN(2000)) * time.Microsecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if rnd.IntN(8) == 0 {
			return fmt.Errorf("injected failure at %s of %s: %w", step, id, errdefs.ErrUnavailable)
		}
		return nil
	})
	gpus := dgxa100.New()
	l, _ := newLifecycle(t, be, gpus)
	defer func() { l.Close() }()

	const ids = 10
	spec := func(i int, variant int) runtime.InstanceSpec {
		s := gpuSpec(fmt.Sprintf("inst-%d", i), "image-a", i%4)
		switch variant {
		case 1: // a different request under the same ID
			s.Image = "image-b"
		case 2: // named GPUs
			s.GPURequest = runtime.GPURequest{IDs: []string{strconv.Itoa(i % 8)}}
		}
		return s
	}
	deadline := func() (context.Context, context.CancelFunc) {
		switch rnd.IntN(3) {
		case 0:
			return context.WithTimeout(context.Background(), time.Duration(rnd.IntN(3000))*time.Microsecond)
		default:
			return context.WithTimeout(context.Background(), time.Minute)
		}
	}

	const workers, opsPerWorker = 6, 12
	for round := range rounds {
		var wg sync.WaitGroup
		errC := make(chan error, workers)
		for range workers {
			wg.Go(func() {
				for range opsPerWorker {
					ctx, cancel := deadline()
					i := rnd.IntN(ids)
					switch op := rnd.IntN(10); {
					case op < 4:
						_, _ = l.Start(ctx, spec(i, 0))
					case op < 5:
						_, _ = l.Start(ctx, spec(i, 1))
					case op < 6:
						_, _ = l.Start(ctx, spec(i, 2))
					case op < 9:
						_ = l.Terminate(ctx, fmt.Sprintf("inst-%d", i), time.Duration(rnd.IntN(3))*time.Millisecond)
					default:
						_, _ = l.Reconcile(ctx)
					}
					cancel()
					if err := checkNoSharedGPU(be, l); err != nil {
						errC <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errC)
		if err := <-errC; err != nil {
			fail("round %d: %v", round, err)
		}
		waitIdle(t, l)
		if err := checkSettled(be, l); err != nil {
			fail("round %d, settled: %v", round, err)
		}
		if rnd.IntN(5) == 0 {
			// The agent restarts: a fresh allocator rebuilt from labels.
			l.Close()
			l, _ = newLifecycle(t, be, gpus)
			if err := checkSettled(be, l); err != nil {
				fail("round %d, after restart: %v", round, err)
			}
		}
	}
	// Terminate everything: every GPU is free again.
	for i := range ids {
		for {
			err := l.Terminate(context.Background(), fmt.Sprintf("inst-%d", i), 0)
			if err == nil || errdefs.IsNotFound(err) {
				break
			}
		}
	}
	waitIdle(t, l)
	if err := checkSettled(be, l); err != nil {
		fail("at the end: %v", err)
	}
	if held := l.Holdings(); len(held) != 0 {
		fail("reservations left after every instance was terminated: %v", held)
	}
}
