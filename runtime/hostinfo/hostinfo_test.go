package hostinfo

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadMemory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tt := range []struct {
		name, content string
		want          Memory
		err           string
	}{
		{"kB", "MemTotal:       16318504 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\n",
			Memory{TotalBytes: 16318504 << 10, AvailableBytes: 12000000 << 10}, ""},
		{"no available", "MemTotal: 2048 kB\n", Memory{TotalBytes: 2 << 20}, ""},
		{"no total", "MemFree: 1 kB\n", Memory{}, "has no MemTotal"},
		{"garbage", "MemTotal: lots kB\n", Memory{}, "parse MemTotal"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			if err := os.WriteFile(p, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := ReadMemory(p)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ReadMemory = %+v, %v; want an error saying %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ReadMemory = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// TestHostMemory reads the machine's own meminfo.
func TestHostMemory(t *testing.T) {
	t.Parallel()
	m, err := ReadMemory("/proc/meminfo")
	if err != nil || m.TotalBytes == 0 || m.AvailableBytes > m.TotalBytes {
		t.Fatalf("ReadMemory(/proc/meminfo) = %+v, %v", m, err)
	}
}

func TestDisk(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	free, err := FreeBytes(dir)
	if err != nil || free == 0 {
		t.Fatalf("FreeBytes(%s) = %d, %v", dir, free, err)
	}
	missing := filepath.Join(dir, "not", "yet")
	if _, err := FreeBytes(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("FreeBytes of a missing path: %v, want fs.ErrNotExist naming it", err)
	}
	d, err := ReadDisk(missing)
	if err != nil || d.Path != dir || d.TotalBytes == 0 || d.FreeBytes > d.TotalBytes {
		t.Errorf("ReadDisk(%s) = %+v, %v; want it measured at %s", missing, d, err, dir)
	}
	if CPUs() < 1 {
		t.Errorf("CPUs = %d", CPUs())
	}
}
