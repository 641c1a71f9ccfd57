package containerd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/invariant"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/gpualloc"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// flaky wraps the real back end with injected delays and failures before
// each start and terminate, and after a start that succeeded (its answer
// lost: the container exists though the lifecycle hears of a failure).
type flaky struct {
	*Runtime
	rnd *invariant.Rand
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
// real containerd and a real rentals' network (CNI, iptables), with
// failures injected around it. After every operation no GPU and no host
// port is recorded on two containers; once each round has
// settled, every container's GPU labels are what the allocator holds for
// it and the allocator holds nothing for an instance without a container,
// and no lease, active snapshot, task, log file, network namespace or IPAM
// lease is left without its container.
func TestLifecycleInvariantsOnContainerd(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	seed, rounds := invariant.Params(t, 3)
	rnd := invariant.NewRand(seed ^ 1)
	ns := testNamespace(t)
	host := newGPUHost(t, nil)
	logDir := t.TempDir()
	cl, cctx := rawClient(t, daemon.Address, ns)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	rentalNet := newInvariantNetwork(t)

	open := func() (*lifecycle.Lifecycle, *Runtime) {
		be, err := New(Options{Address: daemon.Address, Namespace: ns, AgentID: "invariant", LogDir: logDir,
			Devices: host.injector, Logger: logger, Network: rentalNet.net})
		if err != nil {
			t.Fatal(err)
		}
		ports := hostport.NewAllocator(hostport.Range{First: 47100, Last: 47107}, nil)
		l := lifecycle.New(flaky{Runtime: be, rnd: rnd}, lifecycle.Options{
			Kinds: []runtime.Admission{
				lifecycle.GPUReservations{Alloc: gpualloc.New(gpu.NewAllocator(host.inv))},
				lifecycle.PortReservations{Alloc: ports},
			},
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

	settled := func() error {
		list, err := be.List(context.Background())
		if err != nil {
			return err
		}
		if err := invariant.CheckReservations(list, l); err != nil {
			return err
		}
		if err := invariant.CheckNoOrphanHoldings(list, l); err != nil {
			return err
		}
		exists := map[string]bool{}
		for _, inst := range list {
			exists[inst.ID] = true
		}
		if err := checkNoOrphans(cl, cctx, logDir, exists); err != nil {
			return err
		}
		return rentalNet.checkNoOrphans(exists)
	}

	invariant.Schedule{
		Lifecycle: func() *lifecycle.Lifecycle { return l },
		IDs:       6,
		ID:        func(i int) string { return fmt.Sprintf("inv-%d", i) },
		Spec: func(i, variant int) runtime.InstanceSpec {
			s := payloadSpec(fmt.Sprintf("inv-%d", i), "sleep", "inf")
			s.GPURequest = runtime.GPURequest{Count: i % 3}
			// Up to 2 ports each from a range of 8: sometimes exhausted.
			for p := range i % 3 {
				s.Ports = append(s.Ports, hostport.PortRequest{ContainerPort: uint16(22 + p), Protocol: hostport.TCP})
			}
			switch variant {
			case 1:
				s.Command = []string{"sleep", "1000"}
			case 2:
				s.Image = registry.Host + "/no-such-image:latest"
			}
			return s
		},
		ShortDeadline:  300 * time.Millisecond,
		TerminateGrace: 200 * time.Millisecond,
		Workers:        4,
		OpsPerWorker:   5,
		Check: func() error {
			list, err := be.List(context.Background())
			if err != nil {
				return err
			}
			if err := invariant.CheckNoSharedGPU(list); err != nil {
				return err
			}
			return invariant.CheckNoSharedPort(list)
		},
		Settled: settled,
		Restart: func() {
			l.Close()
			l, be = open()
		},
		RestartOneIn: 3,
	}.Run(t, seed, rounds)
	assertNothingLeft(t, ns)
}

// checkNoOrphans fails on a lease, an active snapshot, a task or a log file
// that belongs to no existing container.
func checkNoOrphans(cl *containerd.Client, ctx context.Context, logDir string, exists map[string]bool) error {
	leases, err := cl.LeasesService().List(ctx)
	if err != nil {
		return err
	}
	if len(leases) > 0 {
		return fmt.Errorf("%d leases left, first %s (labels %v, created %s)", len(leases), leases[0].ID, leases[0].Labels, leases[0].CreatedAt)
	}
	var orphanSnaps []string
	err = cl.SnapshotService("").Walk(ctx, func(_ context.Context, i snapshots.Info) error {
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
	tasks, err := cl.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
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
