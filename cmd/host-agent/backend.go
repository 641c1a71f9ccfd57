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

// runtimeChoice is the runtime back end the agent runs on, and why.
type runtimeChoice struct {
	Name string
	Why  string
	// Answers is whether its daemon answered at start.
	Answers bool
	// Held, when set, says why the agent stays on Name rather than switch
	// to the runtime RUNTIME=auto would take: /readyz says it while Name
	// does not answer.
	Held string
}

// chooseRuntime resolves RUNTIME: auto takes containerd when its socket
// answers, else Docker when its socket does. A forced runtime, or auto with
// neither answering, is kept (containerd for auto) and said plainly in the
// log: the back end reconnects when its daemon comes up, and until then
// /readyz answers 503 naming it.
//
// The runtime the agent last ran on (STATE_DIR/runtime) is left only when
// it has no rentals: their GPUs and ports would be handed out again, and
// they would vanish from the heartbeats. Under auto the agent stays on it
// (and waits for its daemon); a forced RUNTIME naming the other one is an
// error. Reading it and probing change nothing; the caller remembers the
// choice.
func chooseRuntime(ctx context.Context, cfg config) (runtimeChoice, error) {
	last, err := rememberedRuntime(cfg)
	if err != nil {
		return runtimeChoice{}, err
	}
	c := probeRuntimes(ctx, cfg)
	if last == "" || last == c.Name {
		return c, nil
	}
	n, err := countRentals(ctx, cfg, last)
	if err == nil && n == 0 {
		c.Why += fmt.Sprintf("; the agent last ran on %s (%s), which has no rentals left", last, runtimeFile(cfg))
		return c, nil
	}
	var reason string
	if err != nil {
		reason = fmt.Sprintf("%s, which the agent last ran on (%s), does not answer, so whether it still runs rentals is unknown (%v)",
			last, runtimeFile(cfg), err)
	} else {
		reason = fmt.Sprintf("%s, which the agent last ran on (%s), still runs %d rental(s)", last, runtimeFile(cfg), n)
	}
	if cfg.Runtime != runtimeAuto {
		return runtimeChoice{Name: last}, &configError{"RUNTIME", fmt.Sprintf(
			"%s, but %s: the agent does not switch runtimes under rentals, whose GPUs and ports would be handed out again; "+
				"set RUNTIME=%s (or auto), or terminate them and, if %s no longer answers, remove %s",
			cfg.Runtime, reason, last, last, runtimeFile(cfg))}
	}
	held := fmt.Sprintf("RUNTIME=auto: staying on %s, not switching to %s: %s", last, c.Name, reason)
	answers := err == nil
	return runtimeChoice{Name: last, Why: held, Answers: answers, Held: held}, nil
}

// probeRuntimes is RUNTIME's choice among the daemons that answer now.
func probeRuntimes(ctx context.Context, cfg config) runtimeChoice {
	ctdErr := probeContainerd(ctx, cfg.ContainerdAddress)
	switch cfg.Runtime {
	case runtimeContainerd:
		if ctdErr != nil {
			return runtimeChoice{runtimeContainerd, fmt.Sprintf("RUNTIME=containerd, but containerd does not answer at %s: %v", cfg.ContainerdAddress, ctdErr), false, ""}
		}
		return runtimeChoice{runtimeContainerd, "RUNTIME=containerd", true, ""}
	case runtimeDocker:
		if err := probeDocker(ctx, cfg.DockerHost); err != nil {
			return runtimeChoice{runtimeDocker, fmt.Sprintf("RUNTIME=docker, but Docker does not answer at %s: %v", cfg.DockerHost, err), false, ""}
		}
		return runtimeChoice{runtimeDocker, "RUNTIME=docker", true, ""}
	}
	if ctdErr == nil {
		return runtimeChoice{runtimeContainerd, fmt.Sprintf("RUNTIME=auto: containerd answers at %s", cfg.ContainerdAddress), true, ""}
	}
	dockerErr := probeDocker(ctx, cfg.DockerHost)
	if dockerErr == nil {
		return runtimeChoice{runtimeDocker, fmt.Sprintf("RUNTIME=auto: containerd does not answer at %s (%v); Docker answers at %s",
			cfg.ContainerdAddress, ctdErr, cfg.DockerHost), true, ""}
	}
	return runtimeChoice{runtimeContainerd, fmt.Sprintf("RUNTIME=auto: neither containerd at %s (%v) nor Docker at %s (%v) answers; "+
		"waiting for containerd, rentals are refused until it answers", cfg.ContainerdAddress, ctdErr, cfg.DockerHost, dockerErr), false, ""}
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

			ImageGCMinFreeBytes: cfg.ImageGCFreeGB << 30,
			DataRootFree:        disk.Free,
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
		PullLayers:        cfg.Pull.Layers,
		PullChunkBytes:    cfg.Pull.ChunkBytes,
		RegistryConfigDir: cfg.Pull.ConfigDir,
		RegistryAuthFile:  cfg.Pull.AuthFile,
		Snapshotter:       cfg.Pull.Snapshotter,

		ImageGCMinFreeBytes: cfg.ImageGCFreeGB << 30,
		FreeSpace:           func() (uint64, error) { return disk.Free(cfg.ContainerdRoot) },
	})
}
