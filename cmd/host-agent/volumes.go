package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/host-agent/host-agent/runtime"
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

// openVolumes opens the host's volume store, rebuilt from VOLUME_DIR, and
// the reservation kind that attaches its volumes to rentals.
func openVolumes(ctx context.Context, cfg config, logger *slog.Logger) (*volume.Store, runtime.ReservationKind, error) {
	store, err := volume.Open(ctx, volume.Options{Dir: cfg.VolumeDir, Logger: logger})
	if err != nil {
		return nil, nil, fmt.Errorf("VOLUME_DIR: %w", err)
	}
	return store, runtime.VolumeReservations{Store: store}, nil
}
