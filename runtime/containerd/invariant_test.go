package containerd

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/gpualloc"
)

// The invariant test against the real containerd runs a few rounds in CI.
// Locally, run it long:
//
//	go test -race ./runtime/containerd -run TestLifecycleInvariantsOnContainerd -invariant.rounds=200
//
// (or HOST_AGENT_INVARIANT_ROUNDS=200); a failure prints the seed, which
// -invariant.seed=N (or HOST_AGENT_INVARIANT_SEED) replays.
var (
	invariantSeed   = flag.Uint64("invariant.seed", 0, "seed of the lifecycle invariant test (0: from the clock)")
	invariantRounds = flag.Int("invariant.rounds", 0, "rounds of the lifecycle invariant test (0: a short run, or HOST_AGENT_INVARIANT_ROUNDS)")
)

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

type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) IntN(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.IntN(n)
}

// flaky wraps the real back end with injected delays and failures before
// each start and terminate, and after a start that succeeded (its answer
// lost: the container exists though the lifecycle hears of a failure).
type flaky struct {
	*Runtime
	rnd *lockedRand
}

func (f flaky) pause(ctx context.Context) error {
	select {
	case <-time.After(time.Duration(f.rnd.IntN(20)) * time.Millisecond):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f flaky) Start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	if err := f.pause(ctx); err != nil {
		return runtime.Instance{}, err
	}
	if f.rnd.IntN(8) == 0 {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepPull, Err: fmt.Errorf("injected: %w", errdefs.ErrUnavailable)}
	}
	inst, err := f.Runtime.Start(ctx, spec)
	if err == nil && f.rnd.IntN(10) == 0 {
		return runtime.Instance{}, fmt.Errorf("injected: answer lost: %w", errdefs.ErrUnavailable)
	}
	return inst, err
}

func (f flaky) Terminate(ctx context.Context, id string, timeout time.Duration) error {
	if err := f.pause(ctx); err != nil {
		return err
	}
	if f.rnd.IntN(8) == 0 {
		return fmt.Errorf("injected kill failure: %w", errdefs.ErrUnavailable)
	}
	return f.Runtime.Terminate(ctx, id, timeout)
}

// TestLifecycleInvariantsOnContainerd sends random starts (fresh, retried,
// conflicting, failing to pull, with GPUs injected through CDI), terminates
// with short caller deadlines, reconciles and agent restarts against the
// real containerd, with failures injected around it. After every
// operation no GPU is recorded on two containers; once each round has
// settled, every container's GPU labels are what the allocator holds for
// it and the allocator holds nothing for an instance without a container,
// and no lease, active snapshot, task or log file is left without its
// container.
func TestLifecycleInvariantsOnContainerd(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	seed, rounds := invariantParams(t, 3)
	rnd := &lockedRand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d: %s", seed, fmt.Sprintf(format, args...))
	}
	ns := testNamespace(t)
	host := newGPUHost(t, nil)
	logDir := t.TempDir()
	cl, cctx := rawClient(t, daemon.Address, ns)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	open := func() (*runtime.Lifecycle, *Runtime) {
		be, err := New(Options{Address: daemon.Address, Namespace: ns, AgentID: "invariant", LogDir: logDir,
			Devices: host.injector, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		l := runtime.NewLifecycle(flaky{Runtime: be, rnd: rnd}, runtime.LifecycleOptions{
			Kinds:             []runtime.ReservationKind{runtime.GPUReservations{Alloc: gpualloc.New(gpu.NewAllocator(host.inv))}},
			Logger:            logger,
			ReconcileInterval: -1,
		})
		if err := l.Restore(context.Background()); err != nil {
			t.Fatal(err)
		}
		return l, be
	}
	l, be := open()
	defer func() { l.Close() }()

	const ids = 6
	spec := func(i, variant int) runtime.InstanceSpec {
		s := payloadSpec(fmt.Sprintf("inv-%d", i), "sleep", "inf")
		s.GPURequest = runtime.GPURequest{Count: i % 3}
		switch variant {
		case 1:
			s.Command = []string{"sleep", "1000"}
		case 2:
			s.Image = registry.Host + "/no-such-image:latest"
		}
		return s
	}
	noSharedGPU := func() error {
		list, err := be.List(context.Background())
		if err != nil {
			return err
		}
		owner := map[string]string{}
		for _, inst := range list {
			for _, g := range inst.GPUs {
				if o, ok := owner[g.UUID]; ok {
					return fmt.Errorf("GPU %s recorded on containers %s and %s", g.UUID, o, inst.ID)
				}
				owner[g.UUID] = inst.ID
			}
		}
		return nil
	}
	settled := func() error {
		if err := noSharedGPU(); err != nil {
			return err
		}
		list, err := be.List(context.Background())
		if err != nil {
			return err
		}
		held := l.Holdings()
		exists := map[string]bool{}
		for _, inst := range list {
			exists[inst.ID] = true
			want := runtime.RecordedByKind(runtime.GPUReservations{}, inst.AgentLabels)
			if fmt.Sprint(want) != fmt.Sprint(held[inst.ID]) && (len(want) > 0 || len(held[inst.ID]) > 0) {
				return fmt.Errorf("container %s records %v, the allocator holds %v", inst.ID, want, held[inst.ID])
			}
		}
		for id, h := range held {
			if !exists[id] {
				return fmt.Errorf("instance %s holds %v without a container", id, h)
			}
		}
		leases, err := cl.LeasesService().List(cctx)
		if err != nil {
			return err
		}
		if len(leases) > 0 {
			return fmt.Errorf("%d leases left, first %s (labels %v, created %s)", len(leases), leases[0].ID, leases[0].Labels, leases[0].CreatedAt)
		}
		var orphanSnaps []string
		err = cl.SnapshotService("").Walk(cctx, func(_ context.Context, i snapshots.Info) error {
			if i.Kind == snapshots.KindActive && !exists[i.Name] {
				orphanSnaps = append(orphanSnaps, i.Name)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(orphanSnaps) > 0 {
			return fmt.Errorf("active snapshots without a container: %v", orphanSnaps)
		}
		tasks, err := cl.TaskService().List(cctx, &tasksapi.ListTasksRequest{})
		if err != nil {
			return err
		}
		for _, tk := range tasks.Tasks {
			if id := taskContainerID(tk); !exists[id] {
				return fmt.Errorf("task %s without a container", id)
			}
		}
		logs, _ := filepath.Glob(filepath.Join(logDir, "*.log"))
		for _, p := range logs {
			if id := strings.TrimSuffix(filepath.Base(p), ".log"); !exists[id] {
				return fmt.Errorf("log file %s without a container", p)
			}
		}
		return nil
	}

	const workers, opsPerWorker = 4, 5
	for round := range rounds {
		var wg sync.WaitGroup
		errC := make(chan error, workers)
		for range workers {
			wg.Go(func() {
				for range opsPerWorker {
					var ctx context.Context
					var cancel context.CancelFunc
					if rnd.IntN(3) == 0 {
						ctx, cancel = context.WithTimeout(context.Background(), time.Duration(rnd.IntN(300))*time.Millisecond)
					} else {
						ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
					}
					i := rnd.IntN(ids)
					switch op := rnd.IntN(10); {
					case op < 4:
						_, _ = l.Start(ctx, spec(i, 0))
					case op < 5:
						_, _ = l.Start(ctx, spec(i, 1))
					case op < 6:
						_, _ = l.Start(ctx, spec(i, 2))
					case op < 9:
						_ = l.Terminate(ctx, fmt.Sprintf("inv-%d", i), time.Duration(rnd.IntN(2))*100*time.Millisecond)
					default:
						_, _ = l.Reconcile(ctx)
					}
					cancel()
					if err := noSharedGPU(); err != nil {
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
		for l.Busy() {
			time.Sleep(10 * time.Millisecond)
		}
		if err := settled(); err != nil {
			fail("round %d, settled: %v", round, err)
		}
		if rnd.IntN(3) == 0 {
			l.Close()
			l, be = open()
			if err := settled(); err != nil {
				fail("round %d, after an agent restart: %v", round, err)
			}
		}
	}
	for i := range ids {
		for attempt := 0; ; attempt++ {
			err := l.Terminate(context.Background(), fmt.Sprintf("inv-%d", i), 0)
			if err == nil || errdefs.IsNotFound(err) {
				break
			}
			if attempt > 50 {
				fail("terminate inv-%d: %v", i, err)
			}
		}
	}
	for l.Busy() {
		time.Sleep(10 * time.Millisecond)
	}
	if err := settled(); err != nil {
		fail("at the end: %v", err)
	}
	if held := l.Holdings(); len(held) != 0 {
		fail("reservations left after every instance was terminated: %v", held)
	}
	assertNothingLeft(t, ns)
}
