package main

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

// daemon is a private containerd run from the bundle, with its own root,
// state and socket under the work directory, so that the check touches no
// containerd of the host's.
type daemon struct {
	dir     string
	address string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// daemonConfig leaves out the CRI plugins, which the agent does not use
// and which want more of the host (CNI, cgroups) than a bare check needs.
const daemonConfig = `version = 3
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
`

// startDaemon starts bin (the bundle's containerd) under dir with env (a
// PATH on which it finds the bundle's shim and runc) and waits until it
// answers or ctx is done.
func startDaemon(ctx context.Context, bin, dir string, env []string) (*daemon, error) {
	for _, d := range []string{"root", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o711); err != nil {
			return nil, err
		}
	}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(daemonConfig), 0o600); err != nil {
		return nil, err
	}
	d := &daemon{dir: dir, address: filepath.Join(dir, "containerd.sock"), logPath: filepath.Join(dir, "containerd.log")}
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--config", cfg, "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--address", d.address)
	cmd.Stdout, cmd.Stderr, cmd.Env = logf, logf, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	d.cmd, d.exited = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(d.exited)
	}()
	if err := d.waitReady(ctx); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

func (d *daemon) waitReady(ctx context.Context) error {
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("containerd exited at start:\n%s", d.logTail(3000))
		case <-ctx.Done():
			return fmt.Errorf("containerd did not answer: %w\n%s", ctx.Err(), d.logTail(3000))
		case <-time.After(100 * time.Millisecond):
		}
		cl, err := containerd.New(d.address)
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

func (d *daemon) logTail(n int) string {
	b, _ := os.ReadFile(d.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// close kills every task the daemon runs, deletes the containers, and stops
// it (SIGTERM, then SIGKILL), so the check leaves no shim behind.
func (d *daemon) close() {
	if d.cmd == nil {
		return
	}
	if err := d.reap(); err != nil {
		fmt.Fprintln(os.Stderr, "gpu-check: clean up containerd:", err)
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

func (d *daemon) reap() error {
	cl, err := containerd.New(d.address)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
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
