package conformance

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	"github.com/host-agent/host-agent/runtime/volume"
)

// openVolumes opens a volume store in dir, as the agent does at start.
func openVolumes(t *testing.T, dir string) *volume.Store {
	t.Helper()
	s, err := volume.Open(context.Background(), volume.Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// unmountVolumes unmounts what a store left mounted in dir (their loop
// devices go with them).
func unmountVolumes(t *testing.T, dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		data := filepath.Join(dir, e.Name(), "data")
		if out, err := exec.Command("umount", data).CombinedOutput(); err != nil && !strings.Contains(string(out), "not mounted") {
			t.Logf("umount %s: %v: %s", data, err, out)
		}
	}
}

// testVolumes: a volume attached to a rental is mounted read-write at its
// path and bounded by its size inside; its data outlives the rental and is
// there for the owner's next one; another owner is refused, and so is a
// second rental while the first holds it; it cannot be deleted while
// attached, also after the agent restarted; deleted, its data is gone.
func testVolumes(t *testing.T, h Harness) {
	testenv.Require(t, "mkfs.ext4", "mount", "umount")
	sc := h.NewScope(t)
	dir := t.TempDir()
	t.Cleanup(func() { unmountVolumes(t, dir) })
	store := openVolumes(t, dir)
	a := openWith(t, sc, nil, []runtime.Admission{lifecycle.VolumeReservations{Store: store}})
	ctx := Ctx(t)
	if _, _, err := store.Create(ctx, volume.Spec{Name: "ds", Owner: "tenant-7", SizeGB: 1}); err != nil {
		t.Fatal(err)
	}
	attach := []runtime.VolumeRequest{{Name: "ds", Owner: "tenant-7", MountPath: "/data"}}

	first := uniqueID(t, "first")
	s := spec(h, first, "write", "/data/hello", "fill", "/data/big", "1200", "echo", "END", "sleep", "inf")
	s.Volumes = attach
	if _, err := a.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	logs := waitLogs(t, a, first, "END")
	if !strings.Contains(logs, "write /data/hello: ok") {
		t.Fatalf("the rental could not write its volume:\n%s", logs)
	}
	if !strings.Contains(logs, "fill /data/big: error after ") || !strings.Contains(logs, "no space left on device") {
		t.Fatalf("writing 1200 MiB into a 1 GiB volume did not fail with ENOSPC:\n%s", logs)
	}
	if got := store.List(ctx); len(got) != 1 || got[0].AttachedTo != first || got[0].UsedBytes < 900<<20 {
		t.Errorf("volumes while attached: %+v", got)
	}
	if err := store.Delete(ctx, "ds"); !errdefs.IsConflict(err) {
		t.Fatalf("delete while attached: %v, want a conflict", err)
	}

	// Another owner: refused, leaving nothing.
	thief := uniqueID(t, "thief")
	s = spec(h, thief, "sleep", "inf")
	s.Volumes = []runtime.VolumeRequest{{Name: "ds", Owner: "tenant-8", MountPath: "/data"}}
	if _, err := a.Start(ctx, s); !errdefs.IsPermissionDenied(err) {
		t.Fatalf("start with another owner's volume: %v, want permission denied", err)
	}
	assertGone(t, a, thief)
	// The owner's second rental while the first holds it: a conflict.
	second := uniqueID(t, "second")
	s = spec(h, second, "sleep", "inf")
	s.Volumes = attach
	if _, err := a.Start(ctx, s); !errdefs.IsConflict(err) {
		t.Fatalf("start with a volume held by another rental: %v, want a conflict", err)
	}
	assertGone(t, a, second)
	s.Volumes = []runtime.VolumeRequest{{Name: "nope", Owner: "tenant-7", MountPath: "/data"}}
	if _, err := a.Start(ctx, s); !errdefs.IsNotFound(err) {
		t.Fatalf("start with a volume that does not exist: %v, want not found", err)
	}
	assertGone(t, a, second)

	if err := a.Terminate(ctx, first, time.Second); err != nil {
		t.Fatal(err)
	}
	// The next rental of the owner reads what the first wrote.
	next := uniqueID(t, "next")
	s = spec(h, next, "cat", "/data/hello", "ls", "/data", "cat", "/proc/self/mountinfo", "echo", "END", "sleep", "inf")
	s.Volumes = attach
	if _, err := a.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	logs = waitLogs(t, a, next, "END")
	if !strings.Contains(logs, "written by the tenant\n") || !strings.Contains(logs, "big\n") {
		t.Fatalf("the next rental does not see the data:\n%s", logs)
	}
	if opts := mountOptions(logs, "/data"); !slices.Contains(opts, "rw") || !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
		t.Errorf("the volume is mounted at /data with %v, want rw, nosuid and nodev:\n%s", opts, logs)
	}

	// The agent restarts: the store is rebuilt from its directory and the
	// attachment from the container's labels.
	a.Close()
	store = openVolumes(t, dir)
	b := openWith(t, sc, nil, []runtime.Admission{lifecycle.VolumeReservations{Store: store}})
	if got := store.List(ctx); len(got) != 1 || got[0].Name != "ds" || got[0].Owner != "tenant-7" || got[0].AttachedTo != next {
		t.Fatalf("volumes after a restart: %+v", got)
	}
	if err := store.Delete(ctx, "ds"); !errdefs.IsConflict(err) {
		t.Fatalf("delete while attached, after a restart: %v, want a conflict", err)
	}
	if err := b.Terminate(ctx, next, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, "ds"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ds")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the deleted volume's files: %v", err)
	}
	// Created again, it is empty.
	if _, _, err := store.Create(ctx, volume.Spec{Name: "ds", Owner: "tenant-7", SizeGB: 1}); err != nil {
		t.Fatal(err)
	}
	again := uniqueID(t, "again")
	s = spec(h, again, "ls", "/data", "echo", "END", "sleep", "inf")
	s.Volumes = attach
	if _, err := b.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	if logs := waitLogs(t, b, again, "END"); strings.Contains(logs, "hello") || strings.Contains(logs, "big") {
		t.Fatalf("a deleted volume's data came back:\n%s", logs)
	}
	if err := b.Terminate(ctx, again, time.Second); err != nil {
		t.Fatal(err)
	}
}

// mountOptions are the per-mount options of the mount at point in
// mountinfo lines (the last one there), or nil.
func mountOptions(mountinfo, point string) []string {
	var out []string
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == point {
			out = strings.Split(f[5], ",")
		}
	}
	return out
}
