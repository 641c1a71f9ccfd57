package testenv

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

// Containerd is a private containerd daemon with its own root, state and
// socket, so that tests can restart it without touching the host's.
type Containerd struct {
	Dir     string
	Address string
	LogPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

const containerdConfig = `version = 3
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
`

// StartContainerd starts a daemon under dir and waits until it answers.
func StartContainerd(dir string) (*Containerd, error) {
	for _, d := range []string{"root", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o711); err != nil {
			return nil, err
		}
	}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(containerdConfig), 0o600); err != nil {
		return nil, err
	}
	c := &Containerd{
		Dir:     dir,
		Address: filepath.Join(dir, "containerd.sock"),
		LogPath: filepath.Join(dir, "containerd.log"),
	}
	return c, c.Start()
}

// Start (re)starts the daemon on the same directories.
func (c *Containerd) Start() error {
	logf, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("containerd",
		"--config", filepath.Join(c.Dir, "config.toml"),
		"--root", filepath.Join(c.Dir, "root"),
		"--state", filepath.Join(c.Dir, "state"),
		"--address", c.Address)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a test's signals do not reach it by accident.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	c.cmd, c.exited = cmd, make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(cmd, c.exited)
	return c.waitReady(30 * time.Second)
}

func (c *Containerd) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-c.exited:
			log, _ := os.ReadFile(c.LogPath)
			return fmt.Errorf("containerd exited at start:\n%s", tailString(string(log), 4000))
		default:
		}
		if cl, err := containerd.New(c.Address); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, verr := cl.Version(ctx)
			cancel()
			cl.Close()
			if verr == nil {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("containerd did not answer in time")
}

// Stop ends the daemon (SIGTERM, then SIGKILL). Shims and their tasks live on,
// as they do when containerd is restarted on a real host.
func (c *Containerd) Stop() error {
	if c.cmd == nil {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	c.cmd = nil
	return nil
}

// Restart stops and starts the daemon.
func (c *Containerd) Restart() error {
	if err := c.Stop(); err != nil {
		return err
	}
	return c.Start()
}

// Close kills every task left in every namespace, then stops the daemon, so
// that tests leave no shims behind.
func (c *Containerd) Close() error {
	if c.cmd != nil {
		if err := c.reap(); err != nil {
			fmt.Fprintln(os.Stderr, "testenv: reap tasks:", err)
		}
	}
	return c.Stop()
}

func (c *Containerd) reap() error {
	cl, err := containerd.New(c.Address)
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
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		cs, err := cl.Containers(nctx)
		if err != nil {
			return err
		}
		for _, ctr := range cs {
			if t, err := ctr.Task(nctx, nil); err == nil {
				_, _ = t.Delete(nctx, containerd.WithProcessKill)
			}
			_ = ctr.Delete(nctx, containerd.WithSnapshotCleanup)
		}
	}
	return nil
}

func tailString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
