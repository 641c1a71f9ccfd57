package containerd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/gpualloc"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	"github.com/host-agent/host-agent/runtime/share"
)

// shareAgent is what cmd/host-agent builds on a GPU host: GPU reservations,
// then the host's shares, over the containerd back end with CDI injection.
func (h *gpuHost) shareAgent(t *testing.T, ns string, rec *conformance.Recorder, opts share.Options) (*agent, *share.Reservations) {
	t.Helper()
	r, err := New(Options{Address: daemon.Address, Namespace: ns, AgentID: "share-test", LogDir: t.TempDir(), Events: rec, Devices: h.injector,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	shares := share.New(opts)
	return withLifecycle(t, r, rec, lifecycle.GPUReservations{Alloc: gpualloc.New(gpu.NewAllocator(h.inv))}, shares), shares
}

func containerCgroup(t *testing.T, r *agent, ns, id string) string {
	t.Helper()
	cl, cctx := rawClient(t, daemon.Address, ns)
	c, err := cl.LoadContainer(cctx, id)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Spec(cctx)
	if err != nil {
		t.Fatal(err)
	}
	return s.Linux.CgroupsPath
}

// An instance naming no limit gets its GPUs' share of the host, enforced by
// the kernel, and a pids limit; one that would oversubscribe the memory is
// refused and leaves nothing.
func TestDefaultLimitsAreTheGPUShare(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	host := newGPUHost(t, nil)
	ns := testNamespace(t)
	r, shares := host.shareAgent(t, ns, conformance.NewRecorder(), share.Options{MemoryMB: 8000, CPUs: 2, GPUs: 8, Pids: 300})
	spec := payloadSpec("two-gpus", "sleep", "inf")
	spec.GPURequest = runtime.GPURequest{Count: 2}
	inst, err := r.Start(ctx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	cg := containerCgroup(t, r, ns, "two-gpus")
	for file, want := range map[string]string{
		"memory/memory.limit_in_bytes": strconv.Itoa(2000 << 20),
		"cpu/cpu.cfs_quota_us":         "50000",
		"pids/pids.max":                "300",
	} {
		if got := readCgroup(t, cg, file); got != want {
			t.Errorf("cgroup %s = %q, want %q", file, got, want)
		}
	}
	if inst.AgentLabels[share.LabelMemoryMB] != "2000" || inst.AgentLabels[share.LabelCPUs] != "0.5" {
		t.Errorf("share labels: %v", inst.AgentLabels)
	}
	if u := shares.Usage(); u.AllocatedMemoryMB != 2000 || u.AllocatedCPUs != 0.5 || u.AllocatableMemoryMB != 8000 {
		t.Errorf("usage %+v", u)
	}

	// 6000 MiB are free: 6001 is refused, naming the field, and nothing of
	// the instance is left.
	big := payloadSpec("too-big", "sleep", "inf")
	big.Resources.MemoryMB = 6001
	_, err = r.Start(ctx(t), big)
	var ae *share.AdmissionError
	if !errors.As(err, &ae) || ae.ErrorField() != "resources" || !errdefs.IsResourceExhausted(err) {
		t.Fatalf("oversubscribing start: %v", err)
	}
	if _, err := r.Get(ctx(t), "too-big"); !errdefs.IsNotFound(err) {
		t.Errorf("refused instance: %v", err)
	}
	big.ID, big.Resources.MemoryMB = "fits", 6000
	if _, err := r.Start(ctx(t), big); err != nil {
		t.Fatal(err)
	}
	// Once one is gone its memory is free again, and the accounting
	// survives a restart of the agent (rebuilt from labels).
	if err := r.Terminate(ctx(t), "fits", time.Second); err != nil {
		t.Fatal(err)
	}
	if u := shares.Usage(); u.AllocatedMemoryMB != 2000 {
		t.Errorf("after terminate: %+v", u)
	}
	_, restarted := host.shareAgent(t, ns, conformance.NewRecorder(), share.Options{MemoryMB: 8000, CPUs: 2, GPUs: 8, Pids: 300})
	if u := restarted.Usage(); u.AllocatedMemoryMB != 2000 || u.Instances != 1 {
		t.Errorf("after restart: %+v", u)
	}
}

// A fork bomb runs into its own pids limit; the host still starts the next
// rental.
func TestForkBombStaysInItsRental(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	host := newGPUHost(t, nil)
	ns := testNamespace(t)
	r, _ := host.shareAgent(t, ns, conformance.NewRecorder(), share.Options{MemoryMB: 8000, CPUs: 2, GPUs: 8, Pids: 64})
	if _, err := r.Start(ctx(t), payloadSpec("bomb", "forkbomb")); err != nil {
		t.Fatal(err)
	}
	cg := containerCgroup(t, r, ns, "bomb")
	// The kernel counts the forks it refused at the limit.
	deadline := time.Now().Add(time.Minute)
	for {
		events := readCgroup(t, cg, "pids/pids.events")
		if f := strings.Fields(events); len(f) == 2 && f[1] != "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fork bomb never reached its limit: pids.events %q, pids.current %s",
				events, readCgroup(t, cg, "pids/pids.current"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n, _ := strconv.Atoi(readCgroup(t, cg, "pids/pids.current")); n > 64 {
		t.Errorf("pids.current = %d above the limit", n)
	}
	// While it keeps trying, another rental starts, within a bound.
	c, cancel := context.WithTimeout(ctx(t), 90*time.Second)
	defer cancel()
	inst, err := r.Start(c, payloadSpec("neighbour", "echo", "up", "sleep", "inf"))
	if err != nil {
		t.Fatalf("start beside a fork bomb: %v", err)
	}
	if inst.Status != runtime.StatusRunning {
		t.Errorf("neighbour %+v", inst)
	}
	if err := r.Terminate(ctx(t), "bomb", 0); err != nil {
		t.Fatal(err)
	}
}
