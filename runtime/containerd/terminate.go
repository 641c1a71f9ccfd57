package containerd

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// killWait bounds the wait for a task to die after SIGKILL.
const killWait = 30 * time.Second

// Terminate implements runtime.Runtime for lifecycle.Lifecycle, which calls
// it for one instance at a time on a context bounding the whole
// termination: SIGTERM, SIGKILL after timeout, then the task, container,
// snapshot and log are deleted.
func (r *Runtime) Terminate(ctx context.Context, id string, timeout time.Duration) error {
	ctx = r.nsCtx(ctx)
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return notFound(id)
		}
		return convertErr(err)
	}
	labels, err := c.Labels(ctx)
	if err != nil {
		return convertErr(err)
	}
	if labels[runtime.LabelInstanceID] == "" {
		return notFound(id)
	}
	// CNI DEL, with the ports the labels record, once every process of the
	// task is gone (beside the task's deletion, which needs nothing of the
	// network) and before the container and its labels go: when it fails,
	// the container keeps holding the ports and a repeated terminate
	// retries.
	if err := r.stopTask(ctx, c, timeout, func() error { return r.teardownNetwork(ctx, id, labels) }); err != nil {
		return err
	}
	r.fault(FaultAfterTaskDelete)
	if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %q: %w", id, convertErr(err))
	}
	if err := os.Remove(r.logPath(id)); err != nil && !os.IsNotExist(err) {
		r.log.Warn("remove log", "instance_id", id, "error", err)
	}
	r.removeFiles(id)
	return nil
}

// stopTask sends SIGTERM, waits up to timeout for the task to exit, then
// kills every process of the container, and deletes the task. stopped runs
// once no process of the container is left: while the task is deleted, or
// alone when there is no task; stopTask returns its error, after the
// task's.
func (r *Runtime) stopTask(ctx context.Context, c containerd.Container, timeout time.Duration, stopped func() error) error {
	task, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return stopped()
	}
	if err != nil {
		return convertErr(err)
	}
	st, err := task.Status(ctx)
	if err != nil && !errdefs.IsNotFound(err) {
		return convertErr(err)
	}
	// The exit is recorded (published, and its code kept) before the task
	// is deleted: the event stream may deliver it only after the container
	// is gone, when it could no longer be read.
	var exit containerd.ExitStatus
	if err == nil && st.Status == containerd.Stopped {
		exit = *containerd.NewExitStatus(st.ExitStatus, st.ExitTime, nil)
	}
	if err == nil && st.Status != containerd.Stopped {
		exitC, err := task.Wait(ctx)
		if err != nil {
			return convertErr(err)
		}
		if timeout > 0 {
			if err := task.Kill(ctx, syscall.SIGTERM); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("send SIGTERM: %w", convertErr(err))
			}
		}
		select {
		case exit = <-exitC:
		case <-time.After(timeout):
			r.log.Info("instance ignored SIGTERM; killing", "instance_id", c.ID(), "timeout", timeout)
			if err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("send SIGKILL: %w", convertErr(err))
			}
			select {
			case exit = <-exitC:
			case <-time.After(killWait):
				return fmt.Errorf("task did not exit %s after SIGKILL: %w", killWait, errdefs.ErrUnavailable)
			}
		}
	}
	if st.Status != "" && exit.Error() == nil {
		r.recordExitOnce(ctx, c.ID(), int(exit.ExitCode()), exit.ExitTime())
	}
	// The task's init has exited (or never ran): the kernel has killed
	// every other process of its PID namespace, and nothing is left in the
	// network namespace but what the agent pinned.
	done := make(chan error, 1)
	go func() { done <- stopped() }()
	_, err = task.Delete(ctx, containerd.WithProcessKill)
	serr := <-done
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task: %w", convertErr(err))
	}
	return serr
}
