package lifecycle_test

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// Steps at which fakeBackend calls its hook.
const (
	stepPull   = "pull"
	stepCreate = "create"
	stepStart  = "start"
	stepKill   = "kill"
	stepDelete = "delete"
)

// fakeBackend is a thin back end kept in memory, modelled on the containerd
// one: a start takes a lease, pulls, creates the container with its
// snapshot and log, and starts its task, removing what it made on failure;
// a terminate kills the task and deletes the container, snapshot and log.
// Before each step it calls hook, which may delay (honouring the context),
// fail, or block. It also records calls for one instance that overlap,
// which the Lifecycle promises never to make.
type fakeBackend struct {
	runtime.Runtime // unimplemented methods panic

	hook func(ctx context.Context, step, id string) error

	mu         sync.Mutex
	containers map[string]*fakeContainer
	leases     map[string]int // instance -> leases held
	busy       map[string]bool
	overlaps   []string
}

type fakeContainer struct {
	inst     runtime.Instance
	task     bool
	snapshot bool
	log      bool
}

func newFakeBackend(hook func(ctx context.Context, step, id string) error) *fakeBackend {
	if hook == nil {
		hook = func(context.Context, string, string) error { return nil }
	}
	return &fakeBackend{
		hook:       hook,
		containers: map[string]*fakeContainer{},
		leases:     map[string]int{},
		busy:       map[string]bool{},
	}
}

func (f *fakeBackend) enter(id string) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy[id] {
		f.overlaps = append(f.overlaps, id)
	}
	f.busy[id] = true
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.busy[id] = false
	}
}

func (f *fakeBackend) Start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	defer f.enter(spec.ID)()
	f.mu.Lock()
	if c, ok := f.containers[spec.ID]; ok {
		defer f.mu.Unlock()
		if c.inst.SpecHash != spec.Hash() {
			return runtime.Instance{}, fmt.Errorf("instance %q exists with another request: %w", spec.ID, errdefs.ErrConflict)
		}
		return c.inst, nil
	}
	f.leases[spec.ID]++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.leases[spec.ID]--
		if f.leases[spec.ID] == 0 {
			delete(f.leases, spec.ID)
		}
		f.mu.Unlock()
	}()
	if err := f.hook(ctx, stepPull, spec.ID); err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepPull, Err: err}
	}
	if err := f.hook(ctx, stepCreate, spec.ID); err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
	}
	labels := map[string]string{runtime.LabelInstanceID: spec.ID, runtime.LabelSpecHash: spec.Hash()}
	maps.Copy(labels, spec.ReservedLabels)
	inst := runtime.Instance{
		ID: spec.ID, ContainerID: spec.ID, Image: spec.Image, Status: runtime.StatusRunning,
		SpecHash: spec.Hash(), GPUs: spec.GPUs, AgentLabels: labels,
	}
	f.mu.Lock()
	f.containers[spec.ID] = &fakeContainer{inst: inst, snapshot: true, log: true}
	f.mu.Unlock()
	if err := f.hook(ctx, stepStart, spec.ID); err != nil {
		f.mu.Lock()
		delete(f.containers, spec.ID)
		f.mu.Unlock()
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepStart, Err: err}
	}
	f.mu.Lock()
	f.containers[spec.ID].task = true
	f.mu.Unlock()
	return inst, nil
}

func (f *fakeBackend) Terminate(ctx context.Context, id string, _ time.Duration) error {
	defer f.enter(id)()
	f.mu.Lock()
	c, ok := f.containers[id]
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("instance %q: %w", id, errdefs.ErrNotFound)
	}
	if c.task {
		if err := f.hook(ctx, stepKill, id); err != nil {
			return err
		}
		f.mu.Lock()
		c.task = false
		f.mu.Unlock()
	}
	if err := f.hook(ctx, stepDelete, id); err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.containers, id)
	f.mu.Unlock()
	return nil
}

func (f *fakeBackend) Get(_ context.Context, id string) (runtime.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.containers[id]; ok {
		return c.inst, nil
	}
	return runtime.Instance{}, fmt.Errorf("instance %q: %w", id, errdefs.ErrNotFound)
}

func (f *fakeBackend) List(context.Context) ([]runtime.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]runtime.Instance, 0, len(f.containers))
	for _, c := range f.containers {
		out = append(out, c.inst)
	}
	return out, nil
}

func (f *fakeBackend) Close() error { return nil }

// locked runs fn with the back end's state frozen.
func (f *fakeBackend) locked(fn func(containers map[string]*fakeContainer, leases map[string]int)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.containers, f.leases)
}

// gate is a hook step that blocks until released, then returns err.
type gate struct {
	reached chan struct{}
	release chan error
}

func newGate() *gate { return &gate{reached: make(chan struct{}, 1), release: make(chan error, 1)} }

func (g *gate) wait(ctx context.Context) error {
	g.reached <- struct{}{}
	select {
	case err := <-g.release:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
