package containerd

import (
	"context"
	"fmt"
	"syscall"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

var (
	_ runtime.DiskMeter     = (*Runtime)(nil)
	_ runtime.ReasonStopper = (*Runtime)(nil)
)

// DiskUsed implements runtime.DiskMeter: the bytes the instance's writable
// layer uses, as the snapshotter measures its active snapshot (for
// overlayfs, the upper directory's blocks).
func (r *Runtime) DiskUsed(ctx context.Context, id string) (uint64, error) {
	ctx = r.nsCtx(ctx)
	info, err := r.client.ContainerService().Get(ctx, id)
	if err != nil {
		if err = convertErr(err); errdefs.IsNotFound(err) {
			return 0, notFound(id)
		}
		return 0, err
	}
	if info.Labels[runtime.LabelInstanceID] == "" || info.SnapshotKey == "" {
		return 0, notFound(id)
	}
	u, err := r.client.SnapshotService(info.Snapshotter).Usage(ctx, info.SnapshotKey)
	if err != nil {
		return 0, fmt.Errorf("usage of the writable layer of %q: %w", id, convertErr(err))
	}
	if u.Size < 0 {
		return 0, nil
	}
	return uint64(u.Size), nil
}

// StopWithReason implements runtime.ReasonStopper: the reason goes into
// the container's labels, then every process of the task is killed. The
// exit watcher reports the exit with the reason.
func (r *Runtime) StopWithReason(ctx context.Context, id, reason string) error {
	ctx = r.nsCtx(ctx)
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return convertErr(err)
	}
	labels, err := c.Labels(ctx)
	if err != nil {
		return convertErr(err)
	}
	if labels[runtime.LabelInstanceID] == "" {
		return notFound(id)
	}
	if labels[runtime.LabelExitReason] != reason {
		if _, err := c.SetLabels(ctx, map[string]string{runtime.LabelExitReason: reason}); err != nil {
			return fmt.Errorf("record exit reason: %w", convertErr(err))
		}
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		if err = convertErr(err); errdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	if err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("kill task of %q: %w", id, convertErr(err))
	}
	return nil
}
