package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/host-agent/host-agent/runtime/events"
)

// Default bounds of the Lifecycle's detached work.
const (
	// DefaultTerminateMargin is what a terminate may take beyond the stop
	// timeout: SIGKILL, waiting for the task to die, deleting it all.
	DefaultTerminateMargin = 2 * time.Minute
	// DefaultReconcileInterval is how often reservations are checked
	// against the containers.
	DefaultReconcileInterval = time.Minute
	// settleTimeout bounds the look-ups that settle a reservation after a
	// failed start; they run whoever still waits.
	settleTimeout = 30 * time.Second
	// sweepTimeout bounds the removal of leftovers at Restore.
	sweepTimeout = 5 * time.Minute
)

// Options configure a Lifecycle.
type Options struct {
	// Kinds are the admission steps of every start, in order (GPUs
	// first): checks, defaults, and the reservations, which are
	// runtime.ReservationKinds.
	Kinds  []runtime.Admission
	Events events.Publisher
	Logger *slog.Logger
	// TerminateMargin is added to a terminate's stop timeout to bound it
	// (default DefaultTerminateMargin).
	TerminateMargin time.Duration
	// Drain, when set, is where the host's drained state is kept: a drained
	// host refuses new instances (runtime.DrainingError), while a repeated
	// start of an existing one goes through.
	Drain runtime.DrainState
	// ReconcileInterval is how often leftover reservations are looked for
	// (default DefaultReconcileInterval; below zero: never on a timer).
	ReconcileInterval time.Duration
}

// Lifecycle is the one owner of a rental's lifecycle, above every back end.
// For each instance it serialises start and terminate under one lock, and
// it owns every reservation (ReservationKind): a start reserves, records
// the reservations in the spec's labels and has the back end create and
// start the container; a terminate has the back end stop and delete it and
// then releases. The work of both is detached from the caller: a caller
// who stops waiting gets a context error while the work runs to its end and
// settles its reservations (kept with the container, or released when there
// is none). The back end below is thin and is called for one instance at a
// time.
//
// Reservations are held in memory only. Restore rebuilds them from the
// containers' labels when the agent starts; Reconcile, run now and then,
// releases any whose container is gone and restores any a container holds
// but the kinds do not know.
type Lifecycle struct {
	be     runtime.Runtime
	steps  []runtime.Admission       // every start's admission, in order
	kinds  []runtime.ReservationKind // the steps that hold something
	pub    events.Publisher
	log    *slog.Logger
	margin time.Duration
	drain  runtime.DrainState

	locks backend.KeyedMutex

	mu         sync.Mutex
	starts     map[string]map[uint64]context.CancelFunc // starts in flight, queued or running
	nextStart  uint64
	terminates map[string]*terminateCall
	pulls      map[string]*prePull // pre-pulls in flight, by image reference

	restoreMu sync.Mutex
	restored  bool

	ctx    context.Context // lives until Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type terminateCall struct {
	done chan struct{}
	err  error
}

var _ runtime.Runtime = (*Lifecycle)(nil)

// New puts a Lifecycle above be. Call Restore before serving.
func New(be runtime.Runtime, opts Options) *Lifecycle {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Events == nil {
		opts.Events = discardEvents{}
	}
	if opts.TerminateMargin <= 0 {
		opts.TerminateMargin = DefaultTerminateMargin
	}
	if opts.ReconcileInterval == 0 {
		opts.ReconcileInterval = DefaultReconcileInterval
	}
	l := &Lifecycle{
		be:         be,
		steps:      opts.Kinds,
		pub:        opts.Events,
		log:        opts.Logger.With("component", "lifecycle"),
		margin:     opts.TerminateMargin,
		drain:      opts.Drain,
		starts:     map[string]map[uint64]context.CancelFunc{},
		terminates: map[string]*terminateCall{},
		pulls:      map[string]*prePull{},
	}
	for _, a := range opts.Kinds {
		if k, ok := a.(runtime.ReservationKind); ok {
			l.kinds = append(l.kinds, k)
		}
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	if opts.ReconcileInterval > 0 {
		l.wg.Go(func() { l.reconcileLoop(opts.ReconcileInterval) })
	}
	return l
}

// Backend returns the back end below.
func (l *Lifecycle) Backend() runtime.Runtime { return l.be }

// Close calls off the starts in flight, waits for every start and terminate
// to settle, and closes the back end. Containers keep running.
func (l *Lifecycle) Close() error {
	l.cancel()
	l.wg.Wait()
	return l.be.Close()
}

// Restore rebuilds every kind's reservations from the containers' labels.
// Until it has succeeded once, starts are refused with Unavailable:
// reserving blind could hand a held GPU to a second tenant.
func (l *Lifecycle) Restore(ctx context.Context) error {
	l.restoreMu.Lock()
	defer l.restoreMu.Unlock()
	if l.restored {
		return nil
	}
	list, err := l.be.List(ctx)
	if err != nil {
		return fmt.Errorf("read reservations from the runtime: %w", err)
	}
	for _, inst := range list {
		for _, k := range l.kinds {
			if err := k.Restore(inst.ID, inst.AgentLabels); err != nil {
				l.log.Error("restore reservation", "kind", k.Name(), "instance_id", inst.ID, "error", err)
			}
		}
	}
	if sw, ok := l.be.(runtime.LeftoverSweeper); ok {
		// Not bounded by the caller: a sweep cut short leaves leftovers
		// until the next start of the agent.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sweepTimeout)
		err := sw.SweepLeftovers(sctx, list)
		cancel()
		if err != nil {
			l.log.Error("remove leftovers of instances without a container", "error", err)
		}
	}
	l.restored = true
	return nil
}

// Start implements Runtime: reserve, record in labels, create, start. The
// instance's ID and limits are checked first, before anything is reserved
// or pulled.
func (l *Lifecycle) Start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	if err := runtime.ValidateInstanceID(spec.ID); err != nil {
		return runtime.Instance{}, err
	}
	if err := validateUlimits(spec.Ulimits); err != nil {
		return runtime.Instance{}, err
	}
	if len(spec.Ports) > 0 && !l.publishes() {
		return runtime.Instance{}, errPortsNotPublished
	}
	if err := l.Restore(ctx); err != nil {
		return runtime.Instance{}, fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
	}
	workCtx, done := l.beginStart(spec.ID)
	type result struct {
		inst runtime.Instance
		err  error
	}
	resC := make(chan result, 1)
	l.wg.Go(func() {
		inst, err := l.start(workCtx, spec)
		done()
		resC <- result{inst, err}
	})
	select {
	case res := <-resC:
		return res.inst, res.err
	case <-ctx.Done():
		return runtime.Instance{}, fmt.Errorf("stopped waiting for instance %q, whose start goes on: %w", spec.ID, ctx.Err())
	}
}

// errPortsNotPublished refuses a start asking for ports where the agent
// publishes none (no host-port reservations: the back end gives rentals no
// network of the agent's).
var errPortsNotPublished = runtime.FieldError("ports", "publishing ports is not enabled on this agent's runtime")

// publishes reports whether starts reserve host ports.
func (l *Lifecycle) publishes() bool {
	for _, k := range l.steps {
		if _, ok := k.(PortReservations); ok {
			return true
		}
	}
	return false
}

// validateUlimits refuses the first limit (by name) ValidateUlimit does.
func validateUlimits(limits map[string]int64) error {
	names := make([]string, 0, len(limits))
	for name := range limits {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := runtime.ValidateUlimit(name, limits[name]); err != nil {
			return runtime.FieldError("ulimits."+name, err.Error())
		}
	}
	return nil
}

// beginStart records a start in flight and returns its context, which a
// terminate of the instance or Close cancels, and the function that ends
// the record.
func (l *Lifecycle) beginStart(id string) (context.Context, func()) {
	ctx, cancel := context.WithCancel(l.ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nextStart++
	key := l.nextStart
	if l.starts[id] == nil {
		l.starts[id] = map[uint64]context.CancelFunc{}
	}
	l.starts[id][key] = cancel
	return ctx, func() {
		cancel()
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.starts[id], key)
		if len(l.starts[id]) == 0 {
			delete(l.starts, id)
		}
	}
}

// StartsInFlight reports whether a start of id is queued or running.
func (l *Lifecycle) StartsInFlight(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.starts[id]) > 0
}

// Busy reports whether any start or terminate is in flight.
func (l *Lifecycle) Busy() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.starts) > 0 || len(l.terminates) > 0
}

// start runs under the instance's lock.
func (l *Lifecycle) start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	unlock := l.locks.Lock(spec.ID)
	defer unlock()
	if err := ctx.Err(); err != nil {
		return runtime.Instance{}, fmt.Errorf("start of instance %q called off: %w", spec.ID, err)
	}
	existing, err := l.be.Get(ctx, spec.ID)
	switch {
	case err == nil:
		// It exists and keeps what it holds. The same request is answered
		// with it as it is (the back end starts a task that never ran);
		// another request under its ID is a Conflict.
		if existing.SpecHash != spec.Hash() {
			return runtime.Instance{}, fmt.Errorf("instance %q already exists with a different request: %w", spec.ID, errdefs.ErrConflict)
		}
		return l.be.Start(ctx, spec)
	case !errdefs.IsNotFound(err):
		return runtime.Instance{}, fmt.Errorf("look up instance %q: %w", spec.ID, err)
	}
	// A new instance: admitted only on a host that is not drained.
	if err := l.refuseIfDrained(ctx); err != nil {
		return runtime.Instance{}, err
	}
	// No container, and none can appear while the lock is held: anything
	// still held for the ID is a leftover of an earlier failure.
	l.releaseAll(spec.ID)
	spec.ReservedLabels = map[string]string{}
	for i, k := range l.steps {
		labels, err := k.Reserve(&spec)
		if err != nil {
			for _, done := range l.steps[:i] {
				if held, ok := done.(runtime.ReservationKind); ok {
					held.Release(spec.ID)
				}
			}
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepAllocate, Err: err}
		}
		mergeLabels(spec.ReservedLabels, labels)
	}
	spec.ContainerLabels = runtime.RequestLabels(spec, spec.Hash())
	inst, err := l.be.Start(ctx, spec)
	if inst, err = l.started(spec, inst, err); err != nil {
		l.settleFailedStart(spec.ID)
		return runtime.Instance{}, err
	}
	return inst, nil
}

// started logs and publishes how the back end's start of a new instance
// ended: on err, an instance.failed event naming the step that failed (a
// *runtime.StepError's); else an instance.running event with the
// instance's published ports. A repeated start of an existing instance
// publishes nothing: its events were published when it was created.
func (l *Lifecycle) started(spec runtime.InstanceSpec, inst runtime.Instance, err error) (runtime.Instance, error) {
	if err != nil {
		var se *runtime.StepError
		step := ""
		if errors.As(err, &se) {
			step = se.Step
		}
		l.log.Warn("start failed", "instance_id", spec.ID, "step", step, "error", err)
		l.pub.Publish(events.Event{Type: events.TypeInstanceFailed, InstanceID: spec.ID, Status: "failed", Step: step, Error: err.Error()})
		return runtime.Instance{}, err
	}
	l.log.Info("instance running", "instance_id", spec.ID, "image", spec.Image, "pid", inst.Pid)
	l.pub.Publish(events.Event{Type: events.TypeInstanceRunning, InstanceID: spec.ID, Status: string(runtime.StatusRunning), Ports: inst.Ports})
	return inst, nil
}

// refuseIfDrained refuses a new instance on a drained host.
func (l *Lifecycle) refuseIfDrained(ctx context.Context) error {
	if l.drain == nil {
		return nil
	}
	reason, _, drained, err := l.drain.Drained(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("read whether the host is drained: %w", err)
	case drained:
		return &runtime.DrainingError{Reason: reason}
	}
	return nil
}

// settleFailedStart releases a failed start's reservations unless its
// container exists after all (its removal failed: the container and its
// labels keep them, and a terminate frees them). When the runtime cannot
// tell, they are kept, and Reconcile decides later.
func (l *Lifecycle) settleFailedStart(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	_, err := l.be.Get(ctx, id)
	switch {
	case errdefs.IsNotFound(err):
		l.releaseAll(id)
	case err != nil:
		l.log.Warn("cannot tell whether a failed start left its container; its reservations stay until reconciled",
			"instance_id", id, "error", err)
	}
}

func (l *Lifecycle) releaseAll(id string) {
	for _, k := range l.kinds {
		k.Release(id)
	}
}

// Terminate implements Runtime: stop, delete, release. Starts of the
// instance in flight are called off first. Concurrent calls for one instance
// share one termination, which runs to its end (bounded by timeout and the
// margin) even when every caller has stopped waiting.
func (l *Lifecycle) Terminate(ctx context.Context, id string, timeout time.Duration) error {
	if err := runtime.ValidateInstanceID(id); err != nil {
		return err
	}
	l.mu.Lock()
	call := l.terminates[id]
	if call == nil {
		call = &terminateCall{done: make(chan struct{})}
		l.terminates[id] = call
		// The starts queued or running now are called off; a start that
		// arrives later waits for this terminate and then runs.
		calledOff := len(l.starts[id]) > 0
		for _, cancel := range l.starts[id] {
			cancel()
		}
		l.wg.Go(func() {
			call.err = l.terminate(id, timeout, calledOff)
			l.mu.Lock()
			delete(l.terminates, id)
			l.mu.Unlock()
			close(call.done)
		})
	}
	l.mu.Unlock()
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		return fmt.Errorf("stopped waiting for the termination of instance %q, which goes on: %w", id, ctx.Err())
	}
}

func (l *Lifecycle) terminate(id string, timeout time.Duration, calledOff bool) error {
	unlock := l.locks.Lock(id)
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+l.margin)
	defer cancel()
	_, err := l.be.Get(ctx, id)
	switch {
	case errdefs.IsNotFound(err):
		// Nothing to stop; whatever is still held for it is free.
		l.releaseAll(id)
		if calledOff {
			l.log.Info("start called off by terminate", "instance_id", id)
			l.terminated(id)
			return nil
		}
		return err
	case err != nil:
		return err
	}
	l.pub.Publish(events.Event{Type: events.TypeInstanceTerminating, InstanceID: id, Status: "terminating"})
	err = l.be.Terminate(ctx, id, timeout)
	switch {
	case err == nil, errdefs.IsNotFound(err):
		// Gone, whoever removed it last.
		l.releaseAll(id)
		l.terminated(id)
		return nil
	default:
		// The container is still there, and keeps what it holds; a
		// repeated terminate tries again.
		l.pub.Publish(events.Event{Type: events.TypeInstanceFailed, InstanceID: id, Status: "failed", Step: "terminate", Error: err.Error()})
		return err
	}
}

// terminated logs and publishes that id is gone.
func (l *Lifecycle) terminated(id string) {
	l.log.Info("instance terminated", "instance_id", id)
	l.pub.Publish(events.Event{Type: events.TypeInstanceTerminated, InstanceID: id, Status: "terminated"})
}

// Reconcile compares every kind's reservations with the containers: a
// reservation whose container is gone (and no start of it is in flight) is
// released, and one that a container's labels record but the kind lacks is
// restored. It returns the instances whose reservations it released.
func (l *Lifecycle) Reconcile(ctx context.Context) ([]string, error) {
	list, err := l.be.List(ctx)
	if err != nil {
		return nil, err
	}
	exists := map[string]bool{}
	for _, inst := range list {
		exists[inst.ID] = true
	}
	candidates := map[string]bool{}
	for _, k := range l.kinds {
		for id := range k.Holdings() {
			if !exists[id] {
				candidates[id] = true
			}
		}
	}
	var released []string
	for id := range candidates {
		if l.StartsInFlight(id) {
			continue
		}
		if l.reconcileOne(ctx, id) {
			released = append(released, id)
		}
	}
	// Containers whose labels record what a kind does not know (a restore
	// that failed at start): checked again under the instance's lock, so
	// that a terminate in between is not undone.
	for _, inst := range list {
		for _, k := range l.kinds {
			if len(k.Holdings()[inst.ID]) == 0 && len(RecordedByKind(k, inst.AgentLabels)) > 0 {
				l.restoreOne(ctx, k, inst.ID)
			}
		}
	}
	return released, nil
}

// reconcileOne releases id's reservations if, under its lock, it has no
// container.
func (l *Lifecycle) reconcileOne(ctx context.Context, id string) bool {
	unlock := l.locks.Lock(id)
	defer unlock()
	_, err := l.be.Get(ctx, id)
	if !errdefs.IsNotFound(err) {
		return false
	}
	l.log.Warn("releasing reservations of an instance without a container", "instance_id", id)
	l.releaseAll(id)
	return true
}

func (l *Lifecycle) restoreOne(ctx context.Context, k runtime.ReservationKind, id string) {
	unlock := l.locks.Lock(id)
	defer unlock()
	inst, err := l.be.Get(ctx, id)
	if err != nil || len(k.Holdings()[id]) > 0 {
		return
	}
	l.log.Warn("restoring a reservation its container records", "kind", k.Name(), "instance_id", id)
	if err := k.Restore(id, inst.AgentLabels); err != nil {
		l.log.Warn("restore reservation", "kind", k.Name(), "instance_id", id, "error", err)
	}
}

func (l *Lifecycle) reconcileLoop(every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(l.ctx, every)
		if _, err := l.Reconcile(ctx); err != nil && !errors.Is(err, context.Canceled) {
			l.log.Debug("reconcile reservations", "error", err)
		}
		cancel()
	}
}

// Holdings returns every kind's reservations, per instance, as the labels
// recording them.
func (l *Lifecycle) Holdings() map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, k := range l.kinds {
		for id, labels := range k.Holdings() {
			if out[id] == nil {
				out[id] = map[string]string{}
			}
			maps.Copy(out[id], labels)
		}
	}
	return out
}

// Records reports whether a label key is one that a reservation kind of
// the Lifecycle writes.
func (l *Lifecycle) Records(key string) bool {
	for _, k := range l.kinds {
		if k.Records(key) {
			return true
		}
	}
	return false
}

// Get implements Runtime.
func (l *Lifecycle) Get(ctx context.Context, id string) (runtime.Instance, error) {
	return l.be.Get(ctx, id)
}

// List implements Runtime.
func (l *Lifecycle) List(ctx context.Context) ([]runtime.Instance, error) { return l.be.List(ctx) }

// Logs implements Runtime.
func (l *Lifecycle) Logs(ctx context.Context, id string, tail int) ([]byte, bool, error) {
	return l.be.Logs(ctx, id, tail)
}

// Ping implements Runtime.
func (l *Lifecycle) Ping(ctx context.Context) error { return l.be.Ping(ctx) }

// Info implements Runtime.
func (l *Lifecycle) Info(ctx context.Context) (runtime.Info, error) { return l.be.Info(ctx) }

type discardEvents struct{}

func (discardEvents) Publish(events.Event) {}

// FollowLogs implements LogFollower when the back end does.
func (l *Lifecycle) FollowLogs(ctx context.Context, id string, from int64, tail int, maxBytes int64, w io.Writer, flush func()) (int64, bool, error) {
	f, ok := l.be.(runtime.LogFollower)
	if !ok {
		return 0, false, fmt.Errorf("this runtime cannot follow logs: %w", errdefs.ErrNotImplemented)
	}
	return f.FollowLogs(ctx, id, from, tail, maxBytes, w, flush)
}

// LogOffset implements LogFollower when the back end does.
func (l *Lifecycle) LogOffset(ctx context.Context, id string) (int64, error) {
	f, ok := l.be.(runtime.LogFollower)
	if !ok {
		return 0, fmt.Errorf("this runtime cannot follow logs: %w", errdefs.ErrNotImplemented)
	}
	return f.LogOffset(ctx, id)
}
