package main

import (
	"context"
	"log/slog"
)

// snapshotterChecker is a back end that can say whether containerd
// reaches the configured snapshotter (the containerd back end).
type snapshotterChecker interface {
	CheckSnapshotter(ctx context.Context) error
}

// logSnapshotter says at start which snapshotter rentals' images go to,
// and, loudly, when containerd cannot use it: every start would fail, and
// GET /readyz answers 503 until it can.
func logSnapshotter(ctx context.Context, be any, name string, logger *slog.Logger) {
	if name == "" {
		return
	}
	sc, ok := be.(snapshotterChecker)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if err := sc.CheckSnapshotter(ctx); err != nil {
		logger.Error("SNAPSHOTTER not usable: rentals cannot start until it is", "snapshotter", name, "error", err)
		return
	}
	logger.Info("snapshotter for rentals' images", "snapshotter", name)
}
