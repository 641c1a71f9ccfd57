package main

import (
	"fmt"
	"strconv"

	"github.com/host-agent/host-agent/internal/agent"
)

// shareConfig is how the host's memory and CPUs are divided among rentals
// (runtime/share), as internal/agent builds the share accounting.
type shareConfig = agent.ShareOptions

func loadShareConfig(get func(name, def string) string) (shareConfig, error) {
	var c shareConfig
	var err error
	if c.ReservedMemoryMB, err = strconv.ParseInt(get("HOST_RESERVED_MEMORY_MB", "2048"), 10, 64); err != nil || c.ReservedMemoryMB < 0 {
		return c, &configError{"HOST_RESERVED_MEMORY_MB", "want a whole number of MiB, 0 or more"}
	}
	if c.ReservedCPUs, err = strconv.ParseFloat(get("HOST_RESERVED_CPUS", "1"), 64); err != nil || c.ReservedCPUs < 0 || c.ReservedCPUs > 4096 {
		return c, &configError{"HOST_RESERVED_CPUS", "want a number of CPUs, 0 or more, such as 1.5"}
	}
	if c.CPURentalMemoryMB, err = strconv.ParseInt(get("CPU_RENTAL_MEMORY_MB", "0"), 10, 64); err != nil || c.CPURentalMemoryMB < 0 {
		return c, &configError{"CPU_RENTAL_MEMORY_MB", "want a whole number of MiB (0: one GPU's share)"}
	}
	if c.CPURentalCPUs, err = strconv.ParseFloat(get("CPU_RENTAL_CPUS", "0"), 64); err != nil || c.CPURentalCPUs < 0 || c.CPURentalCPUs > 4096 {
		return c, &configError{"CPU_RENTAL_CPUS", "want a number of CPUs (0: one GPU's share)"}
	}
	if c.Pids, err = strconv.ParseInt(get("RENTAL_PIDS_LIMIT", "16384"), 10, 64); err != nil || c.Pids < 16 || c.Pids > 1<<22 {
		return c, &configError{"RENTAL_PIDS_LIMIT", fmt.Sprintf("want a whole number between 16 and %d", 1<<22)}
	}
	if c.ShmFraction, err = strconv.ParseFloat(get("SHM_MEMORY_FRACTION", "0.5"), 64); err != nil || c.ShmFraction < 0 || c.ShmFraction > 1 {
		return c, &configError{"SHM_MEMORY_FRACTION", "want a fraction between 0 and 1, such as 0.5"}
	}
	return c, nil
}
