package docker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/host-agent/host-agent/runtime/events"
	rentalnet "github.com/host-agent/host-agent/runtime/network"
)

// cleanupTimeout bounds the removal of a half-created instance; it runs even
// when the caller has gone away.
const cleanupTimeout = 30 * time.Second

// Start implements runtime.Runtime for lifecycle.Lifecycle, which calls it for
// one instance at a time with the reservations made and recorded in
// spec.ReservedLabels, on a context detached from the scheduler's request.
// On failure it removes whatever it made.
func (r *Runtime) Start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	c, err := r.inspectByName(ctx, spec.ID)
	switch {
	case err == nil:
		return r.startExisting(ctx, spec.ID, c)
	case !errdefs.IsNotFound(err):
		return runtime.Instance{}, fmt.Errorf("look up instance %q: %w", spec.ID, err)
	}
	inst, err := r.create(ctx, spec)
	if err != nil {
		r.removeFiles(spec.ID)
	}
	return inst, err
}

// inspectByName reads the container named for id, rental or not.
func (r *Runtime) inspectByName(ctx context.Context, id string) (container.InspectResponse, error) {
	res, err := r.client.ContainerInspect(ctx, r.containerName(id), client.ContainerInspectOptions{})
	if err != nil {
		if errdefs.IsNotFound(err) {
			return container.InspectResponse{}, notFound(id)
		}
		return container.InspectResponse{}, convertErr(err)
	}
	return res.Container, nil
}

// startExisting answers a repeated start, which the Lifecycle has checked
// to be the same request, with the instance as it is. A container that
// never ran (the
// agent died between creating and starting it) is started now; one that ran
// is never started again.
func (r *Runtime) startExisting(ctx context.Context, id string, c container.InspectResponse) (runtime.Instance, error) {
	if c.Config == nil || c.Config.Labels[runtime.LabelInstanceID] != id || !r.ours(c.Config.Labels) {
		return runtime.Instance{}, fmt.Errorf("container %q exists but is not a rental: %w", r.containerName(id), errdefs.ErrConflict)
	}
	if c.State != nil && c.State.Status == container.StateCreated {
		if r.opts.Network != nil {
			if err := r.ensureRules(ctx); err != nil {
				return runtime.Instance{}, &runtime.StepError{Step: runtime.StepStart, Err: err}
			}
		}
		if _, err := r.client.ContainerStart(ctx, c.ID, client.ContainerStartOptions{}); err != nil {
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepStart, Err: convertErr(err)}
		}
		if err := r.isolatePorts(); err != nil {
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepStart, Err: err}
		}
		bw, _ := runtime.BandwidthFromLabels(c.Config.Labels)
		if err := r.shapeStarted(ctx, c.ID, bw); err != nil {
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepStart, Err: err}
		}
	}
	return r.Get(ctx, id)
}

// create pulls, creates, verifies and starts; on failure it removes the
// container it made.
func (r *Runtime) create(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	// Image GC waits while a start is between its image and its container.
	r.imageMu.RLock()
	imageChosen := sync.OnceFunc(r.imageMu.RUnlock)
	defer imageChosen()
	ref, err := r.ensureImage(ctx, spec)
	if err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepPull, Err: err}
	}
	// The daemon's probe needs an image: after the pull, before anything
	// of the rental's is made.
	if err := r.grantable(ctx, ref, spec); err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
	}
	r.pub.Publish(events.Event{Type: events.TypeInstanceCreating, InstanceID: spec.ID, Status: "creating"})
	gpus, err := r.gpuRequest(ctx, spec.GPUs)
	if err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
	}
	img, err := r.client.ImageInspect(ctx, ref)
	if err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: fmt.Errorf("inspect image %s: %w", ref, convertErr(err))}
	}
	var imgUser, imgDir string
	var imgLabels map[string]string
	if img.Config != nil {
		imgUser, imgDir, imgLabels = img.Config.User, img.Config.WorkingDir, img.Config.Labels
	}
	if err := backend.ImageWorkingDirError(imgDir); err != nil {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
	}
	// The daemon adds the image's labels the container lacks: sealed, an
	// image cannot pass for the agent.
	labels := runtime.SealLabels(r.labels(spec), imgLabels)
	cfg, hostCfg := containerConfig(ref, spec, labels, gpus, r.opts.LogMaxBytes)
	hostCfg.Ulimits = dockerUlimits(r.ulimits(ctx, ref, spec))
	if lim := runtime.DiskLimitOf(labels); lim > 0 && r.storageSize.Load() {
		withStorageLimit(hostCfg, lim)
	}
	var keys keysPlan
	if len(spec.SSHAuthorizedKeys) > 0 {
		if keys.Targets, err = r.imageKeysPaths(ctx, ref, imgUser); err != nil {
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: fmt.Errorf("SSH keys: %w", err)}
		}
		// The daemon mounts it from the host: STATE_DIR must be the same
		// path there (the README's run line mounts it so).
		if keys.Path, err = backend.WriteAuthorizedKeys(r.filesDir(spec.ID), spec.SSHAuthorizedKeys); err != nil {
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
		}
		withAuthorizedKeys(hostCfg, keys)
	}
	withVolumes(hostCfg, spec.VolumeMounts)
	if n := r.opts.Network; n != nil {
		if err := r.ensureNetwork(ctx); err != nil {
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
		}
		if err := n.applyNetwork(cfg, hostCfg, spec.PublishedPorts); err != nil {
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
		}
	} else if len(spec.PublishedPorts) > 0 {
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: fmt.Errorf("ports reserved but the docker back end has no network to publish them on: %w", errdefs.ErrFailedPrecondition)}
	}
	created, err := r.client.ContainerCreate(ctx, client.ContainerCreateOptions{Name: r.containerName(spec.ID), Config: cfg, HostConfig: hostCfg})
	imageChosen()
	if err != nil {
		err = convertErr(err)
		if errdefs.IsConflict(err) || errdefs.IsAlreadyExists(err) {
			err = fmt.Errorf("a container named %q already exists: %w", r.containerName(spec.ID), errdefs.ErrConflict)
		}
		// A create that failed after the daemon made the container (the
		// caller went away) leaves one: remove it by name.
		r.removeByName(spec.ID)
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
	}
	// The daemon may have altered or ignored what was asked (an old API
	// dropping a field): what it will run is checked, not what was sent.
	res, err := r.client.ContainerInspect(ctx, created.ID, client.ContainerInspectOptions{})
	if err == nil {
		err = verifyConfined(res.Container, gpus, keys, spec.VolumeMounts)
		if err == nil && res.Container.Config != nil {
			if problem := runtime.LabelsProblem(labels, res.Container.Config.Labels); problem != "" {
				err = fmt.Errorf("refusing the container: %s: %w", problem, errdefs.ErrFailedPrecondition)
			}
		}
		if n := r.opts.Network; err == nil && n != nil {
			err = n.verifyPublished(res.Container, spec.PublishedPorts)
		}
	} else {
		err = convertErr(err)
	}
	if err != nil {
		r.removeContainer(created.ID)
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
	}
	if r.opts.Network != nil {
		// Again just before the start: a dockerd restarted meanwhile puts
		// its own jumps ahead of the agent's.
		err = r.ensureRules(ctx)
	}
	if err != nil {
		r.removeContainer(created.ID)
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepCreate, Err: err}
	}
	if _, err := r.client.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		r.removeContainer(created.ID)
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepStart, Err: convertErr(err)}
	}
	if err := r.isolatePorts(); err != nil {
		r.removeContainer(created.ID)
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepStart, Err: err}
	}
	if err := r.shapeStarted(ctx, created.ID, runtime.BandwidthOf(spec)); err != nil {
		r.removeContainer(created.ID)
		r.removeIFB(spec.ID)
		return runtime.Instance{}, &runtime.StepError{Step: runtime.StepStart, Err: err}
	}
	return r.Get(ctx, spec.ID)
}

// labels are the container's labels: the same keys as on containerd, and
// the back end's scope.
func (r *Runtime) labels(spec runtime.InstanceSpec) map[string]string {
	labels := spec.CreationLabels(r.opts.AgentID, time.Now())
	if r.opts.Scope != "" {
		labels[LabelScope] = r.opts.Scope
	}
	return labels
}

// isolatePorts isolates the new rental's port of the rentals' bridge, as
// the containerd back end's network does at CNI ADD: the daemon makes the
// port, so the agent finds it on the bridge once the container runs.
func (r *Runtime) isolatePorts() error {
	if r.opts.Network == nil {
		return nil
	}
	return rentalnet.IsolateBridgePorts(r.opts.Network.Bridge)
}

func (r *Runtime) cleanupCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), cleanupTimeout)
}

func (r *Runtime) removeContainer(containerID string) {
	ctx, cancel := r.cleanupCtx()
	defer cancel()
	if _, err := r.client.ContainerRemove(ctx, containerID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !errdefs.IsNotFound(err) {
		r.log.Error("remove container of failed start", "container", containerID, "error", err)
	}
	r.forgetExit(containerID)
}

// removeByName removes the rental container named for id, if there is one.
func (r *Runtime) removeByName(id string) {
	ctx, cancel := r.cleanupCtx()
	defer cancel()
	c, err := r.inspect(ctx, id)
	if err != nil {
		return
	}
	r.removeContainer(c.ID)
}

func containsAny(s string, subs ...string) bool {
	s = strings.ToLower(s)
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
