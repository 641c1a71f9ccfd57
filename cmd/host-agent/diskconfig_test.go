package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// RENTAL_DISK_GB and DISK_WATCH_INTERVAL are read with their defaults; a
// bad value stops the agent naming the variable.
func TestDiskConfig(t *testing.T) {
	t.Parallel()
	base := map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for bk, bv := range base {
			m[bk] = bv
		}
		return m
	}
	c, err := loadConfig(envOf(base), filepath.Join(t.TempDir(), "no.env"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Disk.RentalGB != 0 || c.Disk.WatchInterval != 10*time.Second {
		t.Fatalf("defaults: %+v", c.Disk)
	}
	c, err = loadConfig(envOf(with("DISK_WATCH_INTERVAL", "2s")), filepath.Join(t.TempDir(), "no.env"))
	if err != nil || c.Disk.WatchInterval != 2*time.Second {
		t.Fatalf("DISK_WATCH_INTERVAL=2s: %+v %v", c.Disk, err)
	}
	c, err = loadConfig(envOf(with("RENTAL_DISK_GB", "50")), filepath.Join(t.TempDir(), "no.env"))
	if err != nil || c.Disk.RentalGB != 50 {
		t.Fatalf("RENTAL_DISK_GB=50: %+v %v", c.Disk, err)
	}
	for _, tc := range []struct{ name, value string }{
		{"DISK_WATCH_INTERVAL", "10"},
		{"DISK_WATCH_INTERVAL", "0s"},
		{"DISK_WATCH_INTERVAL", "-5s"},
		{"DISK_WATCH_INTERVAL", "2h"},
		{"RENTAL_DISK_GB", "-1"},
		{"RENTAL_DISK_GB", "lots"},
	} {
		_, err := loadConfig(envOf(with(tc.name, tc.value)), filepath.Join(t.TempDir(), "no.env"))
		var ce *configError
		if !errors.As(err, &ce) || ce.Var != tc.name || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s=%s: %v, want an error naming %s", tc.name, tc.value, err, tc.name)
		}
	}
}
