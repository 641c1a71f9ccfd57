// Package invariant drives seeded random schedules of starts, terminates
// and reconciles against a lifecycle.Lifecycle, and checks what must hold
// whatever the interleaving: no resource recorded on two containers, and
// each container's reservation labels equal to what the Lifecycle holds
// for it. The lifecycle tests of every back end share it, so that the same
// promises are checked the same way on each.
//
// A test runs a short schedule by default. Run it long with
// -invariant.rounds=N (or HOST_AGENT_INVARIANT_ROUNDS=N); a failure prints
// the seed, which -invariant.seed=N (or HOST_AGENT_INVARIANT_SEED) replays.
package invariant

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

var (
	seedFlag   = flag.Uint64("invariant.seed", 0, "seed of the lifecycle invariant tests (0: from the clock)")
	roundsFlag = flag.Int("invariant.rounds", 0, "rounds of the lifecycle invariant tests (0: a short run, or HOST_AGENT_INVARIANT_ROUNDS)")
)

// Params returns the seed and number of rounds to run: from the flags, then
// the environment, then a fresh seed and short rounds.
func Params(tb testing.TB, short int) (seed uint64, rounds int) {
	seed, rounds = *seedFlag, *roundsFlag
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
	tb.Logf("invariant test: seed %d, %d rounds (replay with -invariant.seed=%d)", seed, rounds, seed)
	return seed, rounds
}

// Rand is a seeded source shared by goroutines. Under concurrency the
// interleaving is the scheduler's, so a seed replays the same operations and
// injected faults, not necessarily the same interleaving; it still finds
// the same bug far more often than not.
type Rand struct {
	mu sync.Mutex
	r  *rand.Rand
}

// NewRand returns a Rand seeded with seed.
func NewRand(seed uint64) *Rand {
	return &Rand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// IntN returns a number in [0, n).
func (r *Rand) IntN(n int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.r.IntN(n)
}

// CheckNoSharedGPU fails when a GPU is recorded on two of the containers in
// list. It holds at every instant, work in flight or not.
func CheckNoSharedGPU(list []runtime.Instance) error {
	owner := map[string]string{}
	for _, inst := range list {
		for _, g := range runtime.ParseGPULabels(inst.AgentLabels[runtime.LabelGPUs], "") {
			if o, ok := owner[g.UUID]; ok {
				return fmt.Errorf("GPU %s recorded on containers %s and %s", g.UUID, o, inst.ID)
			}
			owner[g.UUID] = inst.ID
		}
	}
	return nil
}

// CheckNoSharedPort fails when a host port is recorded on two of the
// containers in list. It holds at every instant, like CheckNoSharedGPU.
func CheckNoSharedPort(list []runtime.Instance) error {
	owner := map[string]string{}
	for _, inst := range list {
		for _, m := range runtime.PortsFromLabels(inst.AgentLabels) {
			// One host port serves TCP and UDP alike: the allocator never
			// splits them, so neither may the labels.
			key := strconv.Itoa(int(m.HostPort))
			if o, ok := owner[key]; ok {
				return fmt.Errorf("host port %s recorded on containers %s and %s", key, o, inst.ID)
			}
			owner[key] = inst.ID
		}
	}
	return nil
}

// CheckReservations is CheckNoSharedGPU and CheckNoSharedPort, and fails too when a container's
// reservation labels (those a kind of l records) differ from what l holds
// for it. Unless list and l's holdings were read at one instant, it holds
// only while no terminate is in flight.
func CheckReservations(list []runtime.Instance, l *lifecycle.Lifecycle) error {
	if err := CheckNoSharedGPU(list); err != nil {
		return err
	}
	if err := CheckNoSharedPort(list); err != nil {
		return err
	}
	held := l.Holdings()
	for _, inst := range list {
		recorded := map[string]string{}
		for k, v := range inst.AgentLabels {
			if l.Records(k) {
				recorded[k] = v
			}
		}
		if !maps.Equal(recorded, held[inst.ID]) && (len(recorded) > 0 || len(held[inst.ID]) > 0) {
			return fmt.Errorf("container %s records %v, the lifecycle holds %v for it", inst.ID, recorded, held[inst.ID])
		}
	}
	return nil
}

// CheckNoOrphanHoldings fails when l holds anything for an instance that
// has no container in list. It holds only once no start is in flight.
func CheckNoOrphanHoldings(list []runtime.Instance, l *lifecycle.Lifecycle) error {
	exists := map[string]bool{}
	for _, inst := range list {
		exists[inst.ID] = true
	}
	for id, labels := range l.Holdings() {
		if !exists[id] {
			return fmt.Errorf("instance %s holds %v without a container", id, labels)
		}
	}
	return nil
}

// Schedule is a random schedule of operations on IDs instances: starts of
// the usual spec (variant 0) and of two others (variants 1 and 2, e.g. a
// conflicting request or a failing pull), terminates and reconciles, from
// Workers goroutines at once, with caller deadlines that are sometimes short.
type Schedule struct {
	// Lifecycle returns the lifecycle to call; Restart may replace it.
	Lifecycle func() *lifecycle.Lifecycle
	IDs       int
	ID        func(i int) string
	Spec      func(i, variant int) runtime.InstanceSpec
	// ShortDeadline and TerminateGrace bound the random caller deadlines
	// and SIGTERM graces.
	ShortDeadline  time.Duration
	TerminateGrace time.Duration
	Workers        int
	OpsPerWorker   int
	// Check runs after every operation, Settled after every round once
	// nothing is in flight.
	Check   func() error
	Settled func() error
	// Restart, if set, restarts the agent after one round in RestartOneIn.
	Restart      func()
	RestartOneIn int
}

// Run runs rounds rounds of the schedule, then terminates every instance
// and checks that nothing is held any more.
func (s Schedule) Run(t *testing.T, seed uint64, rounds int) {
	t.Helper()
	rnd := NewRand(seed)
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d: %s", seed, fmt.Sprintf(format, args...))
	}
	deadline := func() (context.Context, context.CancelFunc) {
		if rnd.IntN(3) == 0 {
			return context.WithTimeout(context.Background(), time.Duration(rnd.IntN(int(s.ShortDeadline)+1)))
		}
		return context.WithTimeout(context.Background(), time.Minute)
	}
	for round := range rounds {
		var wg sync.WaitGroup
		errC := make(chan error, s.Workers)
		for range s.Workers {
			wg.Go(func() {
				for range s.OpsPerWorker {
					ctx, cancel := deadline()
					l, i := s.Lifecycle(), rnd.IntN(s.IDs)
					switch op := rnd.IntN(10); {
					case op < 4:
						_, _ = l.Start(ctx, s.Spec(i, 0))
					case op < 5:
						_, _ = l.Start(ctx, s.Spec(i, 1))
					case op < 6:
						_, _ = l.Start(ctx, s.Spec(i, 2))
					case op < 9:
						_ = l.Terminate(ctx, s.ID(i), time.Duration(rnd.IntN(3))*s.TerminateGrace/2)
					default:
						_, _ = l.Reconcile(ctx)
					}
					cancel()
					if err := s.Check(); err != nil {
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
		WaitIdle(t, s.Lifecycle())
		if err := s.Settled(); err != nil {
			fail("round %d, settled: %v", round, err)
		}
		if s.Restart != nil && rnd.IntN(s.RestartOneIn) == 0 {
			s.Restart()
			if err := s.Settled(); err != nil {
				fail("round %d, after an agent restart: %v", round, err)
			}
		}
	}
	for i := range s.IDs {
		for attempt := 0; ; attempt++ {
			err := s.Lifecycle().Terminate(context.Background(), s.ID(i), 0)
			if err == nil || errdefs.IsNotFound(err) {
				break
			}
			if attempt > 50 {
				fail("terminate %s: %v", s.ID(i), err)
			}
		}
	}
	WaitIdle(t, s.Lifecycle())
	if err := s.Settled(); err != nil {
		fail("at the end: %v", err)
	}
	if held := s.Lifecycle().Holdings(); len(held) != 0 {
		fail("reservations left after every instance was terminated: %v", held)
	}
}

// WaitIdle waits until l has no start or terminate in flight.
func WaitIdle(tb testing.TB, l *lifecycle.Lifecycle) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for l.Busy() {
		if time.Now().After(deadline) {
			tb.Fatal("lifecycle work still in flight after a minute")
		}
		time.Sleep(time.Millisecond)
	}
}
