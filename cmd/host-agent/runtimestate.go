package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	containerdclient "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/docker"
)

// runtimeFileName is the file in STATE_DIR naming the runtime the agent
// runs its rentals on ("containerd" or "docker"): the next start keeps it
// while it has rentals, whatever a probe says.
const runtimeFileName = "runtime"

// runtimeFile is STATE_DIR/runtime.
func runtimeFile(cfg config) string { return filepath.Join(cfg.StateDir, runtimeFileName) }

// rememberedRuntime reads STATE_DIR/runtime: "" when there is none (the
// agent never chose, or an older agent ran).
func rememberedRuntime(cfg config) (string, error) {
	b, err := os.ReadFile(runtimeFile(cfg))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the runtime the agent last ran on: %w", err)
	}
	switch name := strings.TrimSpace(string(b)); name {
	case runtimeContainerd, runtimeDocker:
		return name, nil
	default:
		return "", fmt.Errorf("%s names %q, not containerd or docker: write the runtime the rentals run on into it", runtimeFile(cfg), name)
	}
}

// rememberRuntime writes name to STATE_DIR/runtime, replacing it whole.
func rememberRuntime(cfg config, name string) error {
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("remember the runtime: %w", err)
	}
	tmp, err := os.CreateTemp(cfg.StateDir, runtimeFileName+".*")
	if err != nil {
		return fmt.Errorf("remember the runtime: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(name + "\n"); err != nil {
		tmp.Close()
		return fmt.Errorf("remember the runtime: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("remember the runtime: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("remember the runtime: %w", err)
	}
	if err := os.Rename(tmp.Name(), runtimeFile(cfg)); err != nil {
		return fmt.Errorf("remember the runtime: %w", err)
	}
	return nil
}

// rememberWhenAnswering writes STATE_DIR/runtime once the back end in use
// answers: no rental can start before it does.
func rememberWhenAnswering(ctx context.Context, cfg config, name string, be runtime.Runtime, logger *slog.Logger) {
	for {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := be.Ping(pctx)
		cancel()
		if err == nil {
			if err := rememberRuntime(cfg, name); err != nil {
				logger.Warn("the runtime could not be remembered", "error", err)
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// countRentals counts the rentals on a runtime, as its back end would list
// them: on containerd the namespace's containers with the instance label;
// on Docker the containers with it, but not a scoped back end's (the
// self-test's). An error when the daemon does not answer: then whether it
// has rentals is unknown.
func countRentals(ctx context.Context, cfg config, name string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if name == runtimeDocker {
		c, err := client.New(client.WithHost(cfg.DockerHost), client.WithAPIVersionNegotiation())
		if err != nil {
			return 0, err
		}
		defer c.Close()
		list, err := c.ContainerList(ctx, client.ContainerListOptions{All: true,
			Filters: make(client.Filters).Add("label", runtime.LabelInstanceID)})
		if err != nil {
			return 0, err
		}
		n := 0
		for _, s := range list.Items {
			if s.Labels[docker.LabelScope] == "" {
				n++
			}
		}
		return n, nil
	}
	c, err := containerdclient.New(cfg.ContainerdAddress, containerdclient.WithTimeout(probeTimeout))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	infos, err := c.ContainerService().List(namespaces.WithNamespace(ctx, cfg.ContainerdNamespace), fmt.Sprintf("labels.%q", runtime.LabelInstanceID))
	if err != nil {
		return 0, err
	}
	return len(infos), nil
}
