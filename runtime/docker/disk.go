package docker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
)

var (
	_ runtime.DiskMeter     = (*Runtime)(nil)
	_ runtime.ReasonStopper = (*Runtime)(nil)
)

// reasonsDir, in Options.StateDir, holds one file per container the agent
// stopped on its own account, holding the reason: a container's labels
// cannot change.
const reasonsDir = "exit-reasons"

// DiskUsed implements runtime.DiskMeter: the size of the instance's
// writable layer as the daemon measures it (inspect with size: SizeRw).
func (r *Runtime) DiskUsed(ctx context.Context, id string) (uint64, error) {
	res, err := r.client.ContainerInspect(ctx, r.containerName(id), client.ContainerInspectOptions{Size: true})
	if err != nil {
		if errdefs.IsNotFound(err) {
			return 0, notFound(id)
		}
		return 0, convertErr(err)
	}
	c := res.Container
	if c.Config == nil || c.Config.Labels[runtime.LabelInstanceID] != id || !r.ours(c.Config.Labels) {
		return 0, notFound(id)
	}
	if c.SizeRw == nil || *c.SizeRw < 0 {
		return 0, nil
	}
	return uint64(*c.SizeRw), nil
}

// StopWithReason implements runtime.ReasonStopper: the reason is written to
// the state dir, then the container is killed. The exit watcher reports the
// exit with the reason.
func (r *Runtime) StopWithReason(ctx context.Context, id, reason string) error {
	c, err := r.inspect(ctx, id)
	if err != nil {
		return err
	}
	path := r.reasonPath(c.ID)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("record exit reason: %w", err)
	}
	if err := os.WriteFile(path, []byte(reason), 0o600); err != nil {
		return fmt.Errorf("record exit reason: %w", err)
	}
	if c.State == nil || !(c.State.Running || c.State.Paused || c.State.Restarting) {
		return nil
	}
	if _, err := r.client.ContainerKill(ctx, c.ID, client.ContainerKillOptions{Signal: "SIGKILL"}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("kill container of %q: %w", id, convertErr(err))
	}
	return nil
}

func (r *Runtime) reasonPath(containerID string) string {
	return filepath.Join(r.opts.StateDir, reasonsDir, containerID)
}

// exitReason is the reason recorded for a container's exit, or "".
func (r *Runtime) exitReason(containerID string) string {
	b, err := os.ReadFile(r.reasonPath(containerID))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// withReason completes an instance read by toInstance with its exit reason.
func (r *Runtime) withReason(inst runtime.Instance) runtime.Instance {
	if inst.Status == runtime.StatusExited {
		inst.ExitReason = runtime.ExitReason(r.exitReason(inst.ContainerID), inst.OOMKilled)
	}
	return inst
}

// DiskEnforcement finds how rentals' writable layers can be limited on
// this daemon: hard (--storage-opt size=) where its storage driver is
// overlay2 on XFS mounted with project quotas, else watched
// (runtime/disk's Watcher). From then on, where hard, every rental with a
// disk limit is created with it as its size. It also returns the daemon's
// data root, where the writable layers are.
func (r *Runtime) DiskEnforcement(ctx context.Context) (string, disk.Enforcement, error) {
	info, err := r.client.Info(ctx, client.InfoOptions{})
	if err != nil {
		return "", disk.Enforcement{}, convertErr(err)
	}
	root, driver := info.Info.DockerRootDir, info.Info.Driver
	if root == "" {
		return "", disk.Enforcement{}, fmt.Errorf("the daemon names no data root: %w", errdefs.ErrUnavailable)
	}
	ok, why := disk.ProjectQuotas(root)
	switch {
	case driver != "overlay2":
		r.storageSize.Store(false)
		return root, disk.Enforcement{Mode: disk.ModeWatched, Why: fmt.Sprintf("the daemon's storage driver is %s, not overlay2: --storage-opt size is not used; the agent watches writable layers", driver)}, nil
	case !ok:
		r.storageSize.Store(false)
		return root, disk.Enforcement{Mode: disk.ModeWatched, Why: why + ": overlay2 cannot take --storage-opt size there; the agent watches writable layers"}, nil
	}
	r.storageSize.Store(true)
	return root, disk.Enforcement{Mode: disk.ModeHard, Why: why + ": overlay2 limits each writable layer (--storage-opt size)"}, nil
}

// withStorageLimit limits the container's writable layer to limit bytes
// through the storage driver (--storage-opt size=), which overlay2 supports
// on XFS with project quotas only (DiskEnforcement).
func withStorageLimit(host *container.HostConfig, limit uint64) {
	if host.StorageOpt == nil {
		host.StorageOpt = map[string]string{}
	}
	host.StorageOpt["size"] = strconv.FormatUint(limit, 10)
}
