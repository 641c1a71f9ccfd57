package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/server/reporter"
)

// diskConfig is how rentals' writable layers are limited (runtime/disk).
type diskConfig struct {
	// RentalGB is the limit of a rental naming none (RENTAL_DISK_GB);
	// zero: its GPU share of what the disk allocates.
	RentalGB uint64
	// WatchInterval is how often writable layers are measured
	// (DISK_WATCH_INTERVAL).
	WatchInterval time.Duration
}

func loadDiskConfig(get func(name, def string) string) (diskConfig, error) {
	var c diskConfig
	var err error
	if c.RentalGB, err = strconv.ParseUint(get("RENTAL_DISK_GB", "0"), 10, 32); err != nil {
		return c, &configError{"RENTAL_DISK_GB", "want a whole number of GiB (0: the rental's share of the disk)"}
	}
	if c.WatchInterval, err = time.ParseDuration(get("DISK_WATCH_INTERVAL", disk.DefaultWatchInterval.String())); err != nil ||
		c.WatchInterval < 100*time.Millisecond || c.WatchInterval > time.Hour {
		return c, &configError{"DISK_WATCH_INTERVAL", "want a Go duration between 100ms and 1h, such as 10s"}
	}
	return c, nil
}

// diskLimits are the disk reservation (internal/agent takes it and watches
// it) and how limits are enforced, built once for serve.
type diskLimits struct {
	limits      *disk.Limits
	enforcement disk.Enforcement
}

// newDiskLimits builds the disk limits of the back end be: on containerd
// its snapshotter's file system is CONTAINERD_ROOT's, on Docker the
// daemon's data root (which, where it can, limits each writable layer
// itself). How limits are enforced is logged.
func newDiskLimits(ctx context.Context, cfg config, rtName string, be runtime.Runtime, gpus int, logger *slog.Logger) *diskLimits {
	path, e, err := diskEnforcement(ctx, cfg, rtName, be)
	if err != nil {
		// The daemon does not answer yet: measured at CONTAINERD_ROOT,
		// and watched.
		e = disk.Enforcement{Mode: disk.ModeWatched, Why: fmt.Sprintf("the runtime could not say where its writable layers are (%v); the agent watches them", err)}
	}
	logger.Info("disk limits", "mode", e.Mode, "why", e.Why, "path", path, "watch_interval", cfg.Disk.WatchInterval.String(),
		"rental_disk_gb", cfg.Disk.RentalGB)
	d := &diskLimits{enforcement: e, limits: &disk.Limits{
		Path: path, ReserveBytes: cfg.DiskReserveGB << 30, Default: cfg.Disk.RentalGB << 30, GPUs: gpus,
	}}
	if m, ok := be.(runtime.DiskMeter); ok {
		d.limits.Used = m.DiskUsed
	}
	return d
}

// diskEnforcement says where rentals' writable layers are and how their
// limits are enforced.
func diskEnforcement(ctx context.Context, cfg config, rtName string, be any) (string, disk.Enforcement, error) {
	if rtName != runtimeDocker {
		return cfg.ContainerdRoot, disk.SnapshotterEnforcement(cfg.ContainerdRoot), nil
	}
	d, ok := be.(interface {
		DiskEnforcement(context.Context) (string, disk.Enforcement, error)
	})
	if !ok {
		return cfg.ContainerdRoot, disk.Enforcement{}, fmt.Errorf("the Docker back end cannot tell")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	root, e, err := d.DiskEnforcement(ctx)
	if err != nil {
		return cfg.ContainerdRoot, e, err
	}
	return root, e, nil
}

// info is GET /host's disk_limit.
func (d *diskLimits) info() *reporter.DiskLimitInfo {
	return &reporter.DiskLimitInfo{Mode: d.enforcement.Mode, Why: d.enforcement.Why, AllocatedBytes: d.limits.Held()}
}
