package testenv

import (
	"context"
	"time"

	"github.com/host-agent/host-agent/runtime/containerd/daemon"
)

// Containerd is a private containerd daemon with its own root, state and
// socket, so that tests can restart it without touching the host's.
type Containerd struct{ *daemon.Daemon }

// StartContainerd starts the containerd on PATH under dir and waits until
// it answers.
func StartContainerd(dir string) (*Containerd, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := daemon.Start(ctx, "containerd", dir, nil)
	if err != nil {
		return nil, err
	}
	return &Containerd{d}, nil
}

// Start (re)starts the daemon on the same directories.
func (c *Containerd) Start() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.Daemon.Restart(ctx)
}

// Stop ends the daemon (SIGTERM, then SIGKILL). Shims and their tasks live on,
// as they do when containerd is restarted on a real host.
func (c *Containerd) Stop() error {
	c.Daemon.Stop()
	return nil
}

// Restart stops and starts the daemon.
func (c *Containerd) Restart() error { return c.Start() }
