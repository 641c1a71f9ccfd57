package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	containerdclient "github.com/containerd/containerd/v2/client"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/containerd"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/docker"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/server"
)

// RUNTIME values.
const (
	runtimeAuto       = "auto"
	runtimeContainerd = "containerd"
	runtimeDocker     = "docker"
)

// probeTimeout bounds the check of whether a daemon's socket answers.
const probeTimeout = 3 * time.Second

// chooseRuntime resolves RUNTIME: auto takes containerd when its socket
// answers, else Docker when its socket does. A forced runtime, or auto with
// neither answering, is kept (containerd for auto) and said plainly in the
// log: the back end reconnects when its daemon comes up, and until then
// /readyz answers 503 naming it. It returns the runtime and why.
func chooseRuntime(ctx context.Context, cfg config) (name, why string, ok bool) {
	ctdErr := probeContainerd(ctx, cfg.ContainerdAddress)
	switch cfg.Runtime {
	case runtimeContainerd:
		if ctdErr != nil {
			return runtimeContainerd, fmt.Sprintf("RUNTIME=containerd, but containerd does not answer at %s: %v", cfg.ContainerdAddress, ctdErr), false
		}
		return runtimeContainerd, "RUNTIME=containerd", true
	case runtimeDocker:
		if err := probeDocker(ctx, cfg.DockerHost); err != nil {
			return runtimeDocker, fmt.Sprintf("RUNTIME=docker, but Docker does not answer at %s: %v", cfg.DockerHost, err), false
		}
		return runtimeDocker, "RUNTIME=docker", true
	}
	if ctdErr == nil {
		return runtimeContainerd, fmt.Sprintf("RUNTIME=auto: containerd answers at %s", cfg.ContainerdAddress), true
	}
	dockerErr := probeDocker(ctx, cfg.DockerHost)
	if dockerErr == nil {
		return runtimeDocker, fmt.Sprintf("RUNTIME=auto: containerd does not answer at %s (%v); Docker answers at %s",
			cfg.ContainerdAddress, ctdErr, cfg.DockerHost), true
	}
	return runtimeContainerd, fmt.Sprintf("RUNTIME=auto: neither containerd at %s (%v) nor Docker at %s (%v) answers; "+
		"waiting for containerd, rentals are refused until it answers", cfg.ContainerdAddress, ctdErr, cfg.DockerHost, dockerErr), false
}

func probeContainerd(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	c, err := containerdclient.New(addr, containerdclient.WithTimeout(probeTimeout))
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Version(ctx)
	return err
}

func probeDocker(ctx context.Context, host string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	c, err := client.New(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Ping(ctx, client.PingOptions{})
	return err
}

// backend is a runtime back end that also keeps the drained state.
type backend interface {
	runtime.Runtime
	server.Drainer
}

// newRuntime builds the chosen back end.
func newRuntime(cfg config, name string, pub events.Publisher, devices *cdi.Injector, rentalNet *network.Network, dockerNet *docker.NetworkOptions, logger *slog.Logger) (backend, error) {
	if name == runtimeDocker {
		return docker.New(docker.Options{
			Host:        cfg.DockerHost,
			AgentID:     cfg.AgentID,
			StateDir:    filepath.Join(cfg.StateDir, "docker"),
			Events:      pub,
			Logger:      logger,
			LogMaxBytes: cfg.InstanceLogMaxBytes,
			Network:     dockerNet,
			Devices:     devices,
		})
	}
	var publicIP string
	if cfg.Network.PublicIP.IsValid() {
		publicIP = cfg.Network.PublicIP.String()
	}
	return containerd.New(containerd.Options{
		Network:   rentalNet,
		PublicIP:  publicIP,
		Fault:     faultHook(os.Getenv),
		Address:   cfg.ContainerdAddress,
		Namespace: cfg.ContainerdNamespace,
		AgentID:   cfg.AgentID,
		LogDir:    filepath.Join(cfg.StateDir, "logs", cfg.ContainerdNamespace),
		Events:    pub,
		Logger:    logger,
		Devices:   devices,

		LogMaxBytes:       cfg.InstanceLogMaxBytes,
		PullStallTimeout:  cfg.PullStallTimeout,
		RegistryConfigDir: cfg.Pull.ConfigDir,
		RegistryAuthFile:  cfg.Pull.AuthFile,

		ImageGCMinFreeBytes: cfg.ImageGCFreeGB << 30,
		FreeSpace:           func() (uint64, error) { return disk.Free(cfg.ContainerdRoot) },
	})
}
