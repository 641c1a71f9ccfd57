package cdi

import (
	"context"
	"time"
)

// DefaultDriverCheckInterval is how often WatchDriver looks at the driver.
const DefaultDriverCheckInterval = time.Minute

// WatchDriver notices driver changes while the agent runs, until ctx is
// done: every interval it compares the loaded kernel module's version with
// the one NVML reported at start, and checks that the NVIDIA spec still
// fits the GPUs and that the driver files it mounts are still there
// (regenerating it through NVML when they are not, as EnsureNVIDIASpec
// does). A changed kernel module cannot be followed without a restart (NVML
// was loaded for the old one): it is logged as an error once, and every
// GPU injection is refused with the same reason until the agent restarts.
//
// It does nothing without an Inventory and NVML in the Config. Call it once,
// from its own goroutine.
func (in *Injector) WatchDriver(ctx context.Context, interval time.Duration) {
	if in.inv == nil || in.genLib == nil || len(in.inv.GPUs()) == 0 {
		return
	}
	if interval <= 0 {
		interval = DefaultDriverCheckInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	reported := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		started := in.inv.DriverVersion()
		if loaded := loadedDriverVersion(in.driverFile); loaded != "" && started != "" && loaded != started {
			if loaded != reported {
				reported = loaded
				in.logger.Error("the NVIDIA driver changed while the agent runs; GPU rentals are refused until the agent restarts",
					"started_with", started, "loaded", loaded)
			}
			continue
		}
		if _, err := in.EnsureNVIDIASpec(ctx, in.inv, in.genLib, in.genOpts); err != nil && ctx.Err() == nil {
			in.logger.Error("the NVIDIA CDI spec no longer fits and could not be regenerated; GPU rentals will be refused", "error", err)
		}
	}
}
