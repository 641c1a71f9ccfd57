package main

import (
	"log/slog"

	"github.com/host-agent/host-agent/gpu"
)

// enableMIGRentals makes the MIG devices of GPUs in MIG mode rentable units
// with MIG_RENTALS=true. Without it a GPU in MIG mode is not rented at all:
// CDI has no whole-GPU device for it, and its MIG devices are not listed.
func enableMIGRentals(cfg config, inv *gpu.Inventory, logger *slog.Logger) {
	migGPUs := 0
	for _, g := range inv.GPUs() {
		if g.MIGMode == gpu.MIGEnabled {
			migGPUs++
		}
	}
	if !cfg.MIGRentals {
		if migGPUs > 0 {
			logger.Warn("GPUs in MIG mode are not rented (set MIG_RENTALS=true to rent their MIG devices)", "mig_gpus", migGPUs)
		}
		return
	}
	n := inv.EnableMIGRentals()
	if migGPUs > 0 && n == 0 {
		logger.Warn("GPUs are in MIG mode but hold no MIG devices; create them (nvidia-smi mig -cgi ... -C) to rent them", "mig_gpus", migGPUs)
	}
}
