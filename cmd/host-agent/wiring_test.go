package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/agent"
)

// TestShareReserveNamesTheSetting: a reserve that leaves nothing for
// rentals stops the agent with a configuration error naming the setting
// that is too large.
func TestShareReserveNamesTheSetting(t *testing.T) {
	t.Parallel()
	meminfo := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(meminfo, []byte("MemTotal: 4194304 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		share shareConfig
		want  string
	}{
		{shareConfig{ReservedMemoryMB: 4096}, "HOST_RESERVED_MEMORY_MB"},
		{shareConfig{ReservedCPUs: 4096}, "HOST_RESERVED_CPUS"},
	} {
		r := reservations(config{Share: tt.share}, nil, false, nil, nil)
		r.Meminfo = meminfo
		_, _, err := agent.Kinds(openNoGPUs(t), r, nil)
		var ce *configError
		if !errors.As(shareConfigError(err), &ce) || ce.Var != tt.want {
			t.Errorf("reserve %+v: %v, want a configuration error naming %s", tt.share, shareConfigError(err), tt.want)
		}
	}
	other := errors.New("NUMA nodes: unreadable")
	if err := shareConfigError(other); err != other {
		t.Errorf("another error became %v", err)
	}
}

// TestReservationsFromConfig: the disk reserve is DISK_RESERVE_GB on
// CONTAINERD_ROOT, NUMA alignment NUMA_ALIGN's, host ports published only
// where the agent has a network.
func TestReservationsFromConfig(t *testing.T) {
	t.Parallel()
	cfg := config{ContainerdRoot: "/data/containerd", DiskReserveGB: 3, NUMAAlign: true, Share: shareConfig{Pids: 99}}
	r := reservations(cfg, nil, true, nil, nil)
	if r.DiskPath != "/data/containerd" || r.DiskReserveBytes != 3<<30 || !r.NUMAAlign || !r.PublishPorts || r.Shares.Pids != 99 || r.SysRoot != "/sys" {
		t.Errorf("reservations = %+v", r)
	}
}

func openNoGPUs(t *testing.T) *gpu.Inventory {
	t.Helper()
	inv, err := gpu.Open(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inv.Close() })
	return inv
}
