package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/host-agent/host-agent/internal/agent"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/volume"
)

// reservations are what a start reserves besides its GPUs, as configured:
// the share of the host, host ports where the agent publishes them, the
// disk limits (watched every DISK_WATCH_INTERVAL), the volumes, NUMA
// alignment and the default bandwidth (internal/agent.Kinds puts them in
// order). Without limits, the plain disk reserve at CONTAINERD_ROOT.
func reservations(cfg config, ports *hostport.Allocator, publish bool, limits *disk.Limits, volumes *volume.Store) agent.Reservations {
	return agent.Reservations{
		Shares:            cfg.Share,
		Ports:             ports,
		PublishPorts:      publish,
		DiskPath:          cfg.ContainerdRoot,
		DiskReserveBytes:  cfg.DiskReserveGB << 30,
		DiskLimits:        limits,
		DiskWatchInterval: cfg.Disk.WatchInterval,
		Volumes:           volumes,
		NUMAAlign:         cfg.NUMAAlign,
		SysRoot:           "/sys",
		Bandwidth:         cfg.Bandwidth,
	}
}

// shareConfigError names the setting a share that leaves nothing for
// rentals comes from; other errors pass unchanged.
func shareConfigError(err error) error {
	var se *agent.ShareError
	if !errors.As(err, &se) {
		return err
	}
	name := "HOST_RESERVED_MEMORY_MB"
	if se.CPUs {
		name = "HOST_RESERVED_CPUS"
	}
	return &configError{name, se.Error()}
}

// agentLoops are the daemon's background loops beyond the agent's own:
// remembering the runtime once it answers, the network rules' recheck and
// the self-test at start.
func agentLoops(cfg config, choice runtimeChoice, backend runtime.Runtime, rules *network.Rules, logger *slog.Logger) []func(context.Context) {
	var loops []func(context.Context)
	if !choice.Answers && choice.Held == "" {
		loops = append(loops, func(ctx context.Context) { rememberWhenAnswering(ctx, cfg, choice.Name, backend, logger) })
	}
	if rules != nil {
		loops = append(loops, func(ctx context.Context) { rules.Run(ctx, cfg.Network.RecheckInterval) })
	}
	return append(loops, func(ctx context.Context) { logSelftest(ctx, cfg, logger) })
}
