package containerd

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"sync"
	"time"

	tasktypes "github.com/containerd/containerd/api/types/task"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/network"
)

// cleanupTimeout bounds the removal of a half-created instance; it runs even
// when the caller has gone away.
const cleanupTimeout = 30 * time.Second

// leaseExpiration is when containerd drops a start's lease should the
// agent die before deleting it; a pull has no fixed bound, so it is long.
const leaseExpiration = 48 * time.Hour

// Start implements runtime.Runtime for lifecycle.Lifecycle, which calls it
// for one instance at a time, with the reservations already made and
// recorded in spec.ReservedLabels, and on a context detached from the
// scheduler's request: the work runs on ctx and stops when it is cancelled
// (a terminate calling the start off, or the agent's shutdown), removing
// whatever it made.
func (r *Runtime) Start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	ctx = r.nsCtx(ctx)

	c, err := r.client.LoadContainer(ctx, spec.ID)
	switch {
	case err == nil:
		return r.startExisting(ctx, c)
	case !errdefs.IsNotFound(err):
		return runtime.Instance{}, fmt.Errorf("look up instance %q: %w", spec.ID, convertErr(err))
	}

	return r.create(ctx, spec)
}

// startExisting answers a repeated start, which the Lifecycle has checked
// to be the same request: the instance is answered as it is. A container
// that never ran (the agent died between creating and starting it) gets its
// task now; one that ran is never started again, whatever became of its
// task.
func (r *Runtime) startExisting(ctx context.Context, c containerd.Container) (runtime.Instance, error) {
	labels, err := c.Labels(ctx)
	if err != nil {
		return runtime.Instance{}, convertErr(err)
	}
	if labels[runtime.LabelInstanceID] == "" {
		return runtime.Instance{}, fmt.Errorf("container %q exists in the namespace but is not a rental: %w", c.ID(), errdefs.ErrConflict)
	}
	task, err := c.Task(ctx, nil)
	switch {
	case errdefs.IsNotFound(err) && (labels[runtime.LabelStartedAt] != "" || labels[runtime.LabelExitCode] != ""):
		// It ran and its task is gone (containerd reaps the tasks of a
		// restart): a finished instance is finished, and is answered as it
		// is, with its exit. Running it again would go unreported.
		err = nil
	case errdefs.IsNotFound(err):
		// Never ran: the agent died before its task was created, maybe
		// during CNI ADD. Setup starts the network over (DEL before ADD).
		if r.opts.Network != nil && labels[runtime.LabelNetNS] != "" {
			bw, _ := runtime.BandwidthFromLabels(labels)
			err = r.setupNetwork(ctx, c, runtime.PortsFromLabels(labels), bw, nil)
		}
		if err == nil {
			err = r.startTask(ctx, c, nil)
		}
	case err != nil:
		return runtime.Instance{}, convertErr(err)
	default:
		// A task created but never started (the agent died in between)
		// is started now; any other state is left as it is. A rental's
		// task is created beside CNI ADD, and its address recorded once
		// the setup is over: without it, the setup was cut short and is
		// done again (DEL before ADD) in the namespace the task is in.
		st, serr := task.Status(ctx)
		switch {
		case serr != nil || st.Status != containerd.Created:
		case r.opts.Network != nil && labels[runtime.LabelNetNS] != "" && labels[runtime.LabelIP] == "":
			bw, _ := runtime.BandwidthFromLabels(labels)
			if err = r.setupNetworkAgain(ctx, c, runtime.PortsFromLabels(labels), bw); err == nil {
				err = r.runTask(ctx, c, task)
			}
		default:
			err = r.runTask(ctx, c, task)
		}
	}
	if err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepStart, Err: err}
	}
	return r.Get(ctx, c.ID())
}

// create pulls, creates and starts; on failure it removes whatever it made.
// Everything it makes is held by a lease of its own until the container
// refers to it; the lease is deleted at the end, with a fresh context, even
// when the start was called off, so a cancelled pull leaves nothing behind
// for the garbage collector to wait on.
func (r *Runtime) create(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	// Before the pull: a limit the runtime cannot grant fails any start.
	if err := r.grantable(ctx, spec); err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
	}
	// The lease's name is chosen here and it is created and deleted with
	// fresh contexts: a start called off while the lease is being created
	// cannot leave one the agent does not know of.
	lease := leases.Lease{ID: startLeasePrefix + rand.Text()[:16]}
	r.startLeases.add(lease.ID)
	defer func() {
		ctx, cancel := r.cleanupCtx()
		defer cancel()
		if err := r.client.LeasesService().Delete(ctx, lease); err != nil && !errdefs.IsNotFound(err) {
			// Deleted when the watcher next connects (dropStartLeases).
			r.log.Error("delete lease; retried when containerd is back", "instance_id", spec.ID, "lease", lease.ID, "error", err)
		}
		r.startLeases.remove(lease.ID)
	}()
	lctx, cancel := r.cleanupCtx()
	_, err := r.client.LeasesService().Create(lctx,
		leases.WithID(lease.ID),
		// A safety net only: the lease is deleted when the start ends.
		leases.WithExpiration(leaseExpiration),
		leases.WithLabel("host-agent.io/instance-id", spec.ID))
	cancel()
	if err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepPull, Err: fmt.Errorf("create lease: %w", convertErr(err))}
	}
	ctx = leases.WithLease(ctx, lease.ID)
	// Image GC waits while this start chooses its image and creates its
	// container (pulls included: a pulled image is not removed before its
	// first container exists).
	r.imageMu.RLock()
	defer r.imageMu.RUnlock()
	img, err := r.ensureImage(ctx, spec)
	if err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepPull, Err: err}
	}
	r.touchImage(ctx, img.Name())
	img = r.withRootFS(img)
	r.fault(FaultAfterPull)

	r.pub.Publish(events.Event{Type: events.TypeInstanceCreating, InstanceID: spec.ID, Status: "creating"})
	labels := spec.CreationLabels(r.opts.AgentID, time.Now())
	labels[runtime.LabelLogPath] = r.logPath(spec.ID)
	var att network.Attachment
	switch {
	case r.opts.Network != nil:
		if att, err = r.opts.Network.Prepare(spec.ID, spec.PublishedPorts); err != nil {
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: fmt.Errorf("prepare network: %w", err)}
		}
		labels[runtime.LabelNetNS] = att.NetNS
	case len(spec.PublishedPorts) > 0:
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate,
			Err: fmt.Errorf("ports requested but this agent has no rentals' network: %w", errdefs.ErrFailedPrecondition)}
	}
	// Until the container exists, whatever Prepare or Setup left is torn
	// down here; once it does, removing it tears its network down.
	created := false
	defer func() {
		if !created && r.opts.Network != nil {
			cctx, cancel := r.cleanupCtx()
			defer cancel()
			if err := r.teardownNetwork(cctx, spec.ID, labels); err != nil {
				r.log.Error("tear down network of failed start", "instance_id", spec.ID, "error", err)
			}
		}
	}()
	opts, err := r.specOpts(ctx, img, spec, att)
	if err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
	}
	// containerd copies no image label, but the same seal and check as on
	// Docker hold whatever a later option or client version does.
	runtime.SealLabels(labels, nil)
	c, err := r.client.NewContainer(ctx, spec.ID,
		containerd.WithImage(img),
		containerd.WithSnapshotter(r.opts.Snapshotter),
		containerd.WithNewSnapshot(spec.ID, img),
		containerd.WithRuntime(RuncRuntime, r.runcOptions()),
		containerd.WithNewSpec(opts...),
		containerd.WithContainerLabels(labels),
	)
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			// A snapshot of that name outlived a container: remove it and
			// let the caller retry rather than reuse unknown contents.
			r.removeSnapshot(spec.ID)
		}
		r.removeFiles(spec.ID)
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: convertErr(err)}
	}
	created = true
	// The record containerd answered the create with, no second call.
	if info, err := c.Info(ctx, containerd.WithoutRefreshedMetadata); err == nil {
		if problem := runtime.LabelsProblem(labels, info.Labels); problem != "" {
			r.removeContainer(c)
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate,
				Err: fmt.Errorf("refusing the container: %s: %w", problem, errdefs.ErrFailedPrecondition)}
		}
	}
	r.fault(FaultAfterCreate)
	var netSetup *networkSetup
	if r.opts.Network != nil {
		// The container and its labels, recording the ports, exist before
		// CNI ADD: a restarted agent never hands the ports out again. The
		// task is created in the pinned namespace while ADD runs, and
		// started once the setup is over.
		netSetup = &networkSetup{r: r, c: c, ports: spec.PublishedPorts, bw: runtime.BandwidthOf(spec)}
	}
	if err := r.startTask(ctx, c, netSetup); err != nil {
		r.removeContainer(c)
		step := runtime.StepStart
		if netSetup != nil && netSetup.err != nil {
			step = runtime.StepCreate
		}
		return runtime.Instance{}, &runtime.StepError{Step: step, Err: err}
	}
	return r.Get(ctx, spec.ID)
}

// networkSetup is a rental's network setup run beside its task's creation.
type networkSetup struct {
	r     *Runtime
	c     containerd.Container
	ports []hostport.Mapping
	bw    runtime.Bandwidth
	err   error
}

// run sets the network up, sending on pinned whether the task may be
// created in its namespace (false: the setup failed before), and keeps the
// error for the caller, who reads it after run's result.
func (s *networkSetup) run(ctx context.Context, pinned chan<- bool) error {
	var once sync.Once
	s.err = s.r.setupNetwork(ctx, s.c, s.ports, s.bw, func() { once.Do(func() { pinned <- true }) })
	once.Do(func() { pinned <- s.err == nil })
	return s.err
}

// startTask creates the task with its output going to the instance's log
// file (written by the shim, so it survives agent restarts), waits on it
// before starting it so that no exit can be missed, and starts it. With a
// network setup, the task is created once the setup has pinned its
// namespace, while the setup goes on, and started only after it succeeded.
func (r *Runtime) startTask(ctx context.Context, c containerd.Container, netSetup *networkSetup) error {
	var setupErr chan error
	if netSetup != nil {
		pinned := make(chan bool, 1)
		setupErr = make(chan error, 1)
		go func() { setupErr <- netSetup.run(ctx, pinned) }()
		if !<-pinned {
			return <-setupErr
		}
	}
	path := r.logPath(c.ID())
	task, err := c.NewTask(ctx, cio.LogFile(path))
	if setupErr != nil {
		if serr := <-setupErr; serr != nil {
			if err == nil {
				r.deleteTask(task)
			}
			return serr
		}
	}
	if err != nil {
		return convertErr(err)
	}
	r.fault(FaultAfterTaskCreate)
	return r.runTask(ctx, c, task)
}

// runTask waits on a created task, then starts it, and follows its exit.
func (r *Runtime) runTask(ctx context.Context, c containerd.Container, task containerd.Task) error {
	exitC, err := task.Wait(r.ctx)
	if err != nil {
		r.deleteTask(task)
		return convertErr(err)
	}
	if err := task.Start(ctx); err != nil {
		r.deleteTask(task)
		return convertErr(err)
	}
	r.tasks.set(c.ID(), task.Pid(), tasktypes.Status_RUNNING, 0, time.Time{})
	r.fault(FaultAfterTaskStart)
	if _, err := c.SetLabels(ctx, map[string]string{runtime.LabelStartedAt: time.Now().UTC().Format(time.RFC3339Nano)}); err != nil {
		r.log.Warn("record start time", "instance_id", c.ID(), "error", err)
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		select {
		case st := <-exitC:
			if st.Error() != nil {
				// The connection broke; the watcher reconciles.
				return
			}
			r.recordExit(r.ctx, c.ID(), int(st.ExitCode()), st.ExitTime())
		case <-r.ctx.Done():
		}
	}()
	return nil
}

func (r *Runtime) cleanupCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.nsCtx(context.Background()), cleanupTimeout)
}

func (r *Runtime) deleteTask(task containerd.Task) {
	ctx, cancel := r.cleanupCtx()
	defer cancel()
	if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		r.log.Error("remove task of failed start", "instance_id", task.ID(), "error", err)
	}
}

func (r *Runtime) removeContainer(c containerd.Container) {
	ctx, cancel := r.cleanupCtx()
	defer cancel()
	if labels, err := c.Labels(ctx); err == nil {
		if err := r.teardownNetwork(ctx, c.ID(), labels); err != nil {
			// The container stays: it keeps recording the ports its
			// network still publishes, and a terminate retries.
			r.log.Error("tear down network of failed start; the container is kept", "instance_id", c.ID(), "error", err)
			return
		}
	}
	if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		r.log.Error("remove container of failed start", "instance_id", c.ID(), "error", err)
	}
	if err := os.Remove(r.logPath(c.ID())); err != nil && !os.IsNotExist(err) {
		r.log.Warn("remove log", "instance_id", c.ID(), "error", err)
	}
	r.removeFiles(c.ID())
}

func (r *Runtime) removeSnapshot(key string) {
	ctx, cancel := r.cleanupCtx()
	defer cancel()
	if err := r.client.SnapshotService(r.opts.Snapshotter).Remove(ctx, key); err != nil && !errdefs.IsNotFound(err) {
		r.log.Error("remove stale snapshot", "snapshot", key, "error", err)
	}
}

// specOpts lists the container's spec options: the request's, then the
// GPUs' device plan last so that nothing after it can reset its devices,
// mounts or environment, then the check of the final spec.
func (r *Runtime) specOpts(ctx context.Context, img containerd.Image, spec runtime.InstanceSpec, att network.Attachment) ([]oci.SpecOpts, error) {
	var plan runtime.DevicePlan
	switch {
	case r.opts.Devices != nil:
		uuids := make([]string, len(spec.GPUs))
		for i, g := range spec.GPUs {
			uuids[i] = g.UUID
		}
		var err error
		if plan, err = r.opts.Devices.Plan(uuids); err != nil {
			return nil, fmt.Errorf("inject GPUs: %w", err)
		}
	case len(spec.GPUs) > 0:
		return nil, fmt.Errorf("GPUs requested but this agent has no CDI injection configured: %w", errdefs.ErrFailedPrecondition)
	}
	keys, err := r.writeAuthorizedKeys(ctx, img, spec)
	if err != nil {
		return nil, err
	}
	plan.Mounts = append(plan.Mounts, keys...)
	opts := specOpts(img, spec, r.ulimits(ctx, spec))
	if att.NetNS != "" {
		opts = append(opts, att.SpecOpts(r.opts.PublicIP))
		plan = networkPlan(plan, att)
	}
	if r.appArmor != "" {
		opts = append(opts, oci.WithApparmorProfile(r.appArmor))
	}
	return append(opts, withDevicePlan(plan), verifyConfined(plan, spec.VolumeMounts, att.NetNS, r.appArmor)), nil
}
