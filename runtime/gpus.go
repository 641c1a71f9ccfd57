package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// GPURequest says which GPUs a rental wants: Count of any free, healthy GPUs,
// or exactly IDs (UUIDs, or NVML indexes the allocator turns into UUIDs).
type GPURequest struct {
	Count int
	IDs   []string
}

// IsZero reports whether no GPU is asked for.
func (r GPURequest) IsZero() bool { return r.Count == 0 && len(r.IDs) == 0 }

// GPU is one GPU held by an instance.
type GPU struct {
	Index int
	UUID  string
}

// GPUAllocator hands GPUs to instances exclusively. gpu.Allocator provides
// one; it is declared here, where it is used.
type GPUAllocator interface {
	// Reserve is idempotent for an instance asking again for the same GPUs.
	Reserve(instanceID string, req GPURequest) ([]GPU, error)
	Release(instanceID string)
	// Restore records GPUs an instance already holds (from its labels).
	Restore(instanceID string, uuids []string) error
}

// GPURuntime wraps a back end with GPU allocation: it reserves the rental's
// GPUs before the back end starts it (which injects them and records their
// UUIDs in labels), and releases them when the rental is terminated, not
// merely when it exits. The allocation table is rebuilt from the labels
// before the first allocation, so a restart never hands a held GPU to
// someone else.
type GPURuntime struct {
	Runtime
	alloc GPUAllocator
	log   *slog.Logger

	restoreMu sync.Mutex
	restored  bool

	// starting counts the starts in flight per instance: a terminate that
	// finds no container must not free GPUs that a start has just reserved.
	startMu  sync.Mutex
	starting map[string]int
}

// WithGPUs wraps inner with allocation by alloc.
func WithGPUs(inner Runtime, alloc GPUAllocator, logger *slog.Logger) *GPURuntime {
	return &GPURuntime{Runtime: inner, alloc: alloc, log: logger, starting: map[string]int{}}
}

// Restore rebuilds the allocation table from the instances the back end
// reports. Until it has succeeded once, Start refuses GPU rentals with
// Unavailable: allocating blind could double-book a GPU.
func (g *GPURuntime) Restore(ctx context.Context) error {
	g.restoreMu.Lock()
	defer g.restoreMu.Unlock()
	return g.restoreLocked(ctx)
}

func (g *GPURuntime) restoreLocked(ctx context.Context) error {
	if g.restored {
		return nil
	}
	list, err := g.Runtime.List(ctx)
	if err != nil {
		return fmt.Errorf("read GPU holders from the runtime: %w", err)
	}
	for _, inst := range list {
		if len(inst.GPUs) == 0 {
			continue
		}
		uuids := make([]string, len(inst.GPUs))
		for i, d := range inst.GPUs {
			uuids[i] = d.UUID
		}
		if err := g.alloc.Restore(inst.ID, uuids); err != nil {
			g.log.Error("restore GPU allocation", "instance", inst.ID, "gpus", uuids, "error", err)
		}
	}
	g.restored = true
	return nil
}

// Start implements Runtime. Like the back ends, it does not abandon a start
// whose caller stops waiting: the reservation is settled (kept, or released
// if the start fails) when the start ends.
func (g *GPURuntime) Start(ctx context.Context, spec InstanceSpec) (Instance, error) {
	if spec.GPURequest.IsZero() {
		return g.Runtime.Start(ctx, spec)
	}
	g.restoreMu.Lock()
	err := g.restoreLocked(ctx)
	g.restoreMu.Unlock()
	if err != nil {
		return Instance{}, fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
	}
	type result struct {
		inst Instance
		err  error
	}
	done := make(chan result, 1)
	g.markStarting(spec.ID, 1)
	go func() {
		defer g.markStarting(spec.ID, -1)
		inst, err := g.reserveAndStart(context.WithoutCancel(ctx), spec)
		done <- result{inst, err}
	}()
	select {
	case res := <-done:
		return res.inst, res.err
	case <-ctx.Done():
		return Instance{}, fmt.Errorf("stopped waiting for instance %q, whose start goes on: %w", spec.ID, ctx.Err())
	}
}

func (g *GPURuntime) reserveAndStart(ctx context.Context, spec InstanceSpec) (Instance, error) {
	// An instance that exists already keeps what it holds: its repeat start
	// is answered by the back end, which compares the whole request.
	if inst, err := g.Runtime.Get(ctx, spec.ID); err == nil {
		return g.Runtime.Start(ctx, withGPUs(spec, inst.GPUs))
	}
	gpus, err := g.alloc.Reserve(spec.ID, spec.GPURequest)
	if err != nil {
		return Instance{}, &StepError{Step: StepAllocate, Err: err}
	}
	inst, err := g.Runtime.Start(ctx, withGPUs(spec, gpus))
	if err != nil {
		// A start that lost to a different request for the same ID (a
		// Conflict) must not free the GPUs of the instance that won.
		if _, gerr := g.Runtime.Get(ctx, spec.ID); errdefs.IsNotFound(gerr) {
			g.alloc.Release(spec.ID)
		}
		return Instance{}, err
	}
	return inst, nil
}

func (g *GPURuntime) markStarting(id string, delta int) {
	g.startMu.Lock()
	defer g.startMu.Unlock()
	if g.starting[id] += delta; g.starting[id] == 0 {
		delete(g.starting, id)
	}
}

func withGPUs(spec InstanceSpec, gpus []GPU) InstanceSpec {
	spec.GPUs = gpus
	return spec
}

// Terminate implements Runtime: the GPUs are free again once the container
// is gone. A terminate that finds no container frees what the instance
// still holds (its container was removed behind the agent's back), unless
// a start of it is in flight and has just reserved them.
func (g *GPURuntime) Terminate(ctx context.Context, id string, timeout time.Duration) error {
	err := g.Runtime.Terminate(ctx, id, timeout)
	if err == nil {
		g.alloc.Release(id)
		return nil
	}
	if errdefs.IsNotFound(err) {
		g.startMu.Lock()
		if g.starting[id] == 0 {
			g.alloc.Release(id)
		}
		g.startMu.Unlock()
	}
	return err
}

// FormatGPULabels renders GPUs as the values of LabelGPUs and LabelGPUIndexes.
func FormatGPULabels(gpus []GPU) (uuids, indexes string) {
	u := make([]string, len(gpus))
	ix := make([]string, len(gpus))
	for i, g := range gpus {
		u[i], ix[i] = g.UUID, strconv.Itoa(g.Index)
	}
	return strings.Join(u, ","), strings.Join(ix, ",")
}

// ParseGPULabels reads GPUs back from LabelGPUs and LabelGPUIndexes.
func ParseGPULabels(uuids, indexes string) []GPU {
	if uuids == "" {
		return nil
	}
	u := strings.Split(uuids, ",")
	ix := strings.Split(indexes, ",")
	out := make([]GPU, len(u))
	for i := range u {
		out[i] = GPU{UUID: u[i], Index: -1}
		if i < len(ix) {
			if n, err := strconv.Atoi(ix[i]); err == nil {
				out[i].Index = n
			}
		}
	}
	return out
}
