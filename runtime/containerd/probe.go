package containerd

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
)

// The agent is ready only if containerd can run a container, not merely
// answer: with runc missing or broken every start fails. The check creates
// a task of a probe container whose process does not exist: runc sets the
// container up and then fails to find the process, which proves the runtime
// works without needing an image. The result is cached.
const (
	probeNamespace  = "host-agent-probe"
	probeID         = "host-agent-runtime-probe"
	probeProcess    = "/host-agent-probe-process"
	probeTimeout    = 30 * time.Second
	probeOKFor      = 5 * time.Minute
	probeFailedFor  = 10 * time.Second
	labelProbe      = "host-agent.io/runtime-probe"
	probeRootfsName = "probe-rootfs"
)

// probe caches the result of the last check and runs at most one at a time.
type probe struct {
	mu      sync.Mutex
	err     error
	at      time.Time
	running chan struct{} // closed when the check in progress ends
}

// canRun reports whether containerd can run a container, checking again
// when the cached answer is stale. It waits for a check in progress no
// longer than ctx allows; the check itself goes on and is cached.
func (r *Runtime) canRun(ctx context.Context) error {
	p := &r.probe
	p.mu.Lock()
	fresh := !p.at.IsZero() && time.Since(p.at) < probeOKFor && p.err == nil ||
		!p.at.IsZero() && time.Since(p.at) < probeFailedFor && p.err != nil
	if fresh {
		err := p.err
		p.mu.Unlock()
		return err
	}
	if p.running == nil {
		done := make(chan struct{})
		p.running = done
		r.wg.Go(func() {
			err := r.runProbe()
			p.mu.Lock()
			p.err, p.at, p.running = err, time.Now(), nil
			p.mu.Unlock()
			close(done)
		})
	}
	running := p.running
	p.mu.Unlock()
	select {
	case <-running:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("still checking that containerd can run a container: %w", errdefs.ErrUnavailable)
	}
}

func (r *Runtime) runProbe() error {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	if err := r.probeTask(ctx); err != nil {
		return fmt.Errorf("containerd cannot run a container with %s: %w: %v", RuncRuntime, errdefs.ErrUnavailable, convertErr(err))
	}
	return nil
}

// probeTask creates a task of a probe container, with extra spec options,
// and removes it. nil means the runtime set the container up: the task was
// created, or failed only because its process does not exist. It runs in a
// containerd namespace of its own, which no rental's ID can reach, with
// its root file system under the state directory (the same path on the
// host when the agent runs in a container, as the README's run line mounts
// it).
func (r *Runtime) probeTask(ctx context.Context, extra ...oci.SpecOpts) error {
	ctx = namespaces.WithNamespace(ctx, probeNamespace)
	rootfs := filepath.Join(r.opts.LogDir, probeRootfsName)
	if err := os.MkdirAll(rootfs, 0o700); err != nil {
		return fmt.Errorf("probe rootfs: %w", err)
	}
	r.removeStaleProbes(ctx)
	// An ID of its own: probes of this agent (readiness, limits) and of
	// another agent on the same containerd may run at once.
	id := probeID + "-" + strings.ToLower(rand.Text()[:12])
	opts := append([]oci.SpecOpts{oci.WithRootFSPath(rootfs), oci.WithProcessArgs(probeProcess)}, extra...)
	c, err := r.client.NewContainer(ctx, id,
		containerd.WithRuntime(RuncRuntime, r.runcOptions()),
		containerd.WithNewSpec(opts...),
		containerd.WithContainerLabels(map[string]string{labelProbe: "true"}))
	if err != nil {
		return fmt.Errorf("create the probe container: %w", convertErr(err))
	}
	defer r.removeProbe(ctx, c)
	task, err := c.NewTask(ctx, cio.NullIO)
	if err == nil {
		// A runtime that checks the process only at start still works.
		_, _ = task.Delete(ctx, containerd.WithProcessKill)
		return nil
	}
	// The runtime set the container up and could not find the process: it
	// works.
	if strings.Contains(err.Error(), probeProcess) {
		return nil
	}
	return err
}

// removeProbe deletes a probe container and its task.
func (r *Runtime) removeProbe(ctx context.Context, c containerd.Container) {
	if t, err := c.Task(ctx, nil); err == nil {
		_, _ = t.Delete(ctx, containerd.WithProcessKill)
	}
	if err := c.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		r.log.Warn("remove the probe container", "error", err)
	}
}

// removeStaleProbes deletes probe containers left by a probe that was cut
// short (the agent died in it): those older than a probe can last, so that
// a probe in progress elsewhere is never touched.
func (r *Runtime) removeStaleProbes(ctx context.Context) {
	cs, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q==true", labelProbe))
	if err != nil {
		return
	}
	for _, c := range cs {
		info, err := c.Info(ctx, containerd.WithoutRefreshedMetadata)
		if err != nil || time.Since(info.CreatedAt) < 2*probeTimeout {
			continue
		}
		r.removeProbe(ctx, c)
	}
}

// runcOptions are the runc shim's options for every container.
func (r *Runtime) runcOptions() *options.Options {
	return &options.Options{BinaryName: r.runcBinary}
}
