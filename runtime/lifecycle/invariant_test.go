package lifecycle_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/invariant"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// TestLifecycleInvariants sends random starts (fresh, retried,
// conflicting, with and without GPUs), terminates with short caller
// deadlines, reconciles and agent restarts against a back end that injects
// failures and delays at every step. After every operation: no GPU is
// recorded on two existing containers, nor any host port, and each
// container's GPUs and ports are what the allocators hold for it. After
// every round, once the detached work has settled: no reservation without
// its container, no lease left, and the back end was never called twice at
// once for one instance.
func TestLifecycleInvariants(t *testing.T) {
	t.Parallel()
	seed, rounds := invariant.Params(t, 30)
	rnd := invariant.NewRand(seed ^ 1)
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

	invariant.Schedule{
		Lifecycle: func() *lifecycle.Lifecycle { return l },
		IDs:       10,
		ID:        func(i int) string { return fmt.Sprintf("inst-%d", i) },
		Spec: func(i, variant int) runtime.InstanceSpec {
			s := gpuSpec(fmt.Sprintf("inst-%d", i), "image-a", i%4)
			// Up to 2 ports each from a range of 16: sometimes exhausted.
			for p := range i % 3 {
				s.Ports = append(s.Ports, hostport.PortRequest{ContainerPort: uint16(22 + p), Protocol: hostport.TCP})
			}
			switch variant {
			case 1: // a different request under the same ID
				s.Image = "image-b"
			case 2: // named GPUs
				s.GPURequest = runtime.GPURequest{IDs: []string{strconv.Itoa(i % 8)}}
			}
			return s
		},
		ShortDeadline:  3 * time.Millisecond,
		TerminateGrace: 2 * time.Millisecond,
		Workers:        6,
		OpsPerWorker:   12,
		Check:          func() error { return checkNoSharedGPU(be, l) },
		Settled:        func() error { return checkSettled(be, l) },
		Restart: func() {
			// The agent restarts: a fresh allocator rebuilt from labels.
			l.Close()
			l, _ = newLifecycle(t, be, gpus)
		},
		RestartOneIn: 5,
	}.Run(t, seed, rounds)
}
