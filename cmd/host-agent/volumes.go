package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/volume"
)

// volumeDir reads VOLUME_DIR: an absolute path, STATE_DIR/volumes when
// unset.
func volumeDir(get func(name, def string) string, stateDir string) (string, error) {
	dir := get("VOLUME_DIR", filepath.Join(stateDir, "volumes"))
	if !filepath.IsAbs(dir) {
		return "", &configError{"VOLUME_DIR", fmt.Sprintf("must be an absolute path, got %q", dir)}
	}
	return filepath.Clean(dir), nil
}

// openVolumes opens the host's volume store, rebuilt from VOLUME_DIR
// (internal/agent attaches its volumes to rentals). Where the
// volumes share a file system with the rentals' writable layers, each side
// keeps free what the other promised: a volume fits beside the rentals'
// unwritten disk limits, and a rental's limit beside the volumes' unwritten
// sizes, so that together they never promise more than the disk has.
func openVolumes(ctx context.Context, cfg config, limits *disk.Limits, logger *slog.Logger) (*volume.Store, error) {
	opts := volume.Options{Dir: cfg.VolumeDir, Logger: logger}
	shared := limits != nil && sameFileSystem(cfg.VolumeDir, limits.Path)
	if shared {
		opts.Promised = func() int64 {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			return int64(min(limits.Unwritten(ctx), math.MaxInt64))
		}
	}
	store, err := volume.Open(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("VOLUME_DIR: %w", err)
	}
	if shared {
		limits.Promised = func() uint64 { return uint64(max(0, store.Promised())) }
		logger.Info("volumes share the disk of rentals' writable layers: each keeps free what the other promised",
			"volume_dir", cfg.VolumeDir, "path", limits.Path)
	}
	return store, nil
}

// sameFileSystem reports whether dir (created as the store will) and path
// are on one file system.
func sameFileSystem(dir, path string) bool {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false
	}
	var a, b unix.Stat_t
	if unix.Stat(dir, &a) != nil || unix.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev
}
