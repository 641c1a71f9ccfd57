// Package daemon runs a private containerd with its own root, state and
// socket under one directory, so that whoever runs it (the tests, the GPU
// check) touches no containerd of the host's and can restart it at will.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// config leaves out the CRI plugins, which the agent does not use and which
// want more of the host (CNI, cgroups) than a private daemon needs.
const config = `version = 3
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
`

// Daemon is a private containerd.
type Daemon struct {
	// Dir holds its config, root, state, socket and log.
	Dir     string
	Address string
	LogPath string
	bin     string
	env     []string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// Start prepares dir and starts bin there (with env, when not nil: a PATH
// on which it finds its shim and runc), then waits until it answers or ctx
// is done.
func Start(ctx context.Context, bin, dir string, env []string) (*Daemon, error) {
	return StartWithConfig(ctx, bin, dir, env, "")
}

// StartWithConfig is Start with extra appended to the daemon's
// configuration: proxy_plugins, say, for a snapshotter of the test's own.
func StartWithConfig(ctx context.Context, bin, dir string, env []string, extra string) (*Daemon, error) {
	for _, d := range []string{"root", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o711); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config+extra), 0o600); err != nil {
		return nil, err
	}
	d := &Daemon{Dir: dir, Address: filepath.Join(dir, "containerd.sock"), LogPath: filepath.Join(dir, "containerd.log"),
		bin: bin, env: env}
	if err := d.Restart(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// Restart starts the daemon again on the same directories, stopping it
// first if it runs.
func (d *Daemon) Restart(ctx context.Context) error {
	d.Stop()
	logf, err := os.OpenFile(d.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(d.bin, "--config", filepath.Join(d.Dir, "config.toml"), "--root", filepath.Join(d.Dir, "root"),
		"--state", filepath.Join(d.Dir, "state"), "--address", d.Address)
	cmd.Stdout, cmd.Stderr, cmd.Env = logf, logf, d.env
	// Its own process group, so that signals meant for its parent do not
	// reach it by accident.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	d.cmd, d.exited = cmd, make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(cmd, d.exited)
	if err := d.waitReady(ctx); err != nil {
		d.Stop()
		return err
	}
	return nil
}

func (d *Daemon) waitReady(ctx context.Context) error {
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("containerd exited at start:\n%s", d.LogTail(4000))
		case <-ctx.Done():
			return fmt.Errorf("containerd did not answer: %w\n%s", ctx.Err(), d.LogTail(4000))
		case <-time.After(50 * time.Millisecond):
		}
		cl, err := containerd.New(d.Address)
		if err != nil {
			continue
		}
		vctx, cancel := context.WithTimeout(ctx, time.Second)
		_, verr := cl.Version(vctx)
		cancel()
		cl.Close()
		if verr == nil {
			return nil
		}
	}
}

// LogTail is the last n bytes of the daemon's log.
func (d *Daemon) LogTail(n int) string {
	b, _ := os.ReadFile(d.LogPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Stop ends the daemon (SIGTERM, then SIGKILL after 10 s). Shims and their
// tasks live on, as they do when containerd restarts on a real host.
func (d *Daemon) Stop() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

// Kill ends the daemon with SIGKILL, as a crash or the OOM killer would.
// Shims and their tasks live on.
func (d *Daemon) Kill() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Kill()
	<-d.exited
	d.cmd = nil
}

// Close kills every task the daemon runs, in every namespace, deletes the
// containers and stops the daemon, so that no shim is left behind.
func (d *Daemon) Close() error {
	var err error
	if d.cmd != nil {
		err = d.reap()
	}
	d.Stop()
	return err
}

func (d *Daemon) reap() error {
	cl, err := containerd.New(d.Address)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nss, err := cl.NamespaceService().List(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		cs, err := cl.Containers(nctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, c := range cs {
			if t, err := c.Task(nctx, nil); err == nil {
				_, _ = t.Delete(nctx, containerd.WithProcessKill)
			}
			if err := c.Delete(nctx, containerd.WithSnapshotCleanup); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
