package volume

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// openStore opens a store in dir, unmounting whatever is left mounted
// under dir when the test ends.
func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountUnder(t, dir) })
	return s
}

// unmountUnder unmounts every mount under dir (their loop devices go
// with them: mount(8) sets them to autoclear).
func unmountUnder(t *testing.T, dir string) {
	dir, _ = filepath.EvalSymlinks(dir)
	points, err := mountPoints()
	if err != nil {
		t.Error(err)
		return
	}
	for p := range points {
		if strings.HasPrefix(p, dir+"/") {
			if out, err := exec.Command("umount", p).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", p, err, out)
			}
		}
	}
}

func mounted(t *testing.T, dir string) bool {
	t.Helper()
	ok, err := isMountPoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestCreateAttachDelete(t *testing.T) {
	testenv.Require(t, "mkfs.ext4", "mount", "umount")
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := context.Background()
	v, created, err := s.Create(ctx, Spec{Name: "ds", Owner: "tenant-7", SizeGB: 1})
	if err != nil || !created {
		t.Fatalf("create: %v (created %v)", err, created)
	}
	if s.Backing() != backingLoop || !mounted(t, v.Path) {
		t.Fatalf("backing %s, %s mounted: %v", s.Backing(), v.Path, mounted(t, v.Path))
	}
	// Sparse: the image takes a fraction of its size.
	if got := allocatedBytes(filepath.Join(dir, "ds", imageFile)); got <= 0 || got > gib/4 {
		t.Errorf("image file takes %d bytes", got)
	}
	if err := os.WriteFile(filepath.Join(v.Path, "f"), bytes.Repeat([]byte("x"), 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	syscall.Sync()
	list := s.List(ctx)
	if len(list) != 1 || list[0].Name != "ds" || list[0].Owner != "tenant-7" || list[0].SizeGB != 1 || list[0].UsedBytes < 8<<20 {
		t.Fatalf("list: %+v", list)
	}

	// The same again: the volume as it is; another owner or size: 409.
	if _, created, err := s.Create(ctx, Spec{Name: "ds", Owner: "tenant-7", SizeGB: 1}); err != nil || created {
		t.Errorf("identical create: %v (created %v)", err, created)
	}
	for _, sp := range []Spec{{Name: "ds", Owner: "tenant-8", SizeGB: 1}, {Name: "ds", Owner: "tenant-7", SizeGB: 2}} {
		if _, _, err := s.Create(ctx, sp); !errdefs.IsConflict(err) {
			t.Errorf("create %+v over an existing volume: %v, want a conflict", sp, err)
		}
	}
	if _, _, err := s.Create(ctx, Spec{Name: "huge", Owner: "tenant-7", SizeGB: MaxSizeGB}); !errdefs.IsResourceExhausted(err) {
		t.Errorf("a volume larger than the disk: %v, want resource exhausted", err)
	}

	if _, err := s.Attach("i-other", []runtime.VolumeRequest{{Name: "ds", Owner: "tenant-8", MountPath: "/data"}}); !errdefs.IsPermissionDenied(err) || fieldOf(err) != "volumes[0].owner" {
		t.Errorf("attach by another owner: %v (field %q)", err, fieldOf(err))
	}
	if _, err := s.Attach("i-1", []runtime.VolumeRequest{{Name: "nope", Owner: "tenant-7", MountPath: "/data"}}); !errdefs.IsNotFound(err) || fieldOf(err) != "volumes[0].name" {
		t.Errorf("attach of an unknown volume: %v (field %q)", err, fieldOf(err))
	}
	m, err := s.Attach("i-1", []runtime.VolumeRequest{{Name: "ds", Owner: "tenant-7", MountPath: "/data"}})
	if err != nil || len(m) != 1 || m[0].HostPath != v.Path || m[0].ContainerPath != "/data" {
		t.Fatalf("attach: %+v, %v", m, err)
	}
	if _, err := s.Attach("i-2", []runtime.VolumeRequest{{Name: "ds", Owner: "tenant-7", MountPath: "/data"}}); !errdefs.IsConflict(err) {
		t.Errorf("attach to a second instance: %v, want a conflict", err)
	}
	if got := s.List(ctx)[0].AttachedTo; got != "i-1" {
		t.Errorf("attached to %q", got)
	}
	if err := s.Delete(ctx, "ds"); !errdefs.IsConflict(err) {
		t.Fatalf("delete while attached: %v, want a conflict", err)
	}
	s.Detach("i-1")
	if err := s.Delete(ctx, "ds"); err != nil {
		t.Fatal(err)
	}
	if mounted(t, v.Path) {
		t.Error("still mounted after delete")
	}
	if _, err := os.Stat(filepath.Join(dir, "ds")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("volume's directory after delete: %v", err)
	}
	if err := s.Delete(ctx, "ds"); !errdefs.IsNotFound(err) {
		t.Errorf("delete again: %v, want not found", err)
	}
	// Created again under the same name: empty.
	v, _, err = s.Create(ctx, Spec{Name: "ds", Owner: "tenant-7", SizeGB: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(v.Path, "f")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a deleted volume's data is back: %v", err)
	}
}

func TestWritePastSizeFails(t *testing.T) {
	testenv.Require(t, "mkfs.ext4", "mount", "umount")
	s := openStore(t, t.TempDir())
	v, _, err := s.Create(context.Background(), Spec{Name: "small", Owner: "o", SizeGB: 1})
	if err != nil {
		t.Fatal(err)
	}
	n, err := fill(filepath.Join(v.Path, "big"), 2*gib)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing 2 GiB into a 1 GiB volume: %d bytes, %v; want ENOSPC", n, err)
	}
	if n < gib*8/10 || n > gib {
		t.Errorf("ENOSPC after %d bytes", n)
	}
}

// fill writes up to n bytes to path.
func fill(path string, n int64) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0xa5}, 1<<20)
	var done int64
	for done < n {
		k, err := f.Write(buf)
		done += int64(k)
		if err != nil {
			return done, err
		}
	}
	return done, f.Sync()
}

func TestRebuiltAfterRestart(t *testing.T) {
	testenv.Require(t, "mkfs.ext4", "mount", "umount")
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := context.Background()
	v, _, err := s.Create(ctx, Spec{Name: "keep", Owner: "tenant-7", SizeGB: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Create(ctx, Spec{Name: "idle", Owner: "tenant-9", SizeGB: 1}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.Path, "model.bin"), []byte("weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	kind := lifecycle.VolumeReservations{Store: s}
	spec := runtime.InstanceSpec{ID: "i-1", Volumes: []runtime.VolumeRequest{{Name: "keep", Owner: "tenant-7", MountPath: "/data"}}}
	labels, err := kind.Reserve(&spec)
	if err != nil {
		t.Fatal(err)
	}
	if labels[runtime.LabelVolumes] != "keep" || len(spec.VolumeMounts) != 1 {
		t.Fatalf("labels %v, mounts %+v", labels, spec.VolumeMounts)
	}
	// A creation cut short leaves a directory without metadata.
	if err := os.MkdirAll(filepath.Join(dir, "halfmade", dataDir), 0o700); err != nil {
		t.Fatal(err)
	}
	// A host reboot: nothing mounted any more.
	unmountUnder(t, dir)
	if mounted(t, v.Path) {
		t.Fatal("still mounted")
	}

	s2 := openStore(t, dir)
	kind2 := lifecycle.VolumeReservations{Store: s2}
	if err := kind2.Restore("i-1", labels); err != nil {
		t.Fatal(err)
	}
	list := s2.List(ctx)
	if len(list) != 2 || list[0].Name != "idle" || list[1].Name != "keep" || list[1].Owner != "tenant-7" ||
		list[1].AttachedTo != "i-1" || list[0].AttachedTo != "" || !list[1].CreatedAt.Equal(v.CreatedAt) {
		t.Fatalf("rebuilt: %+v", list)
	}
	if !mounted(t, v.Path) {
		t.Fatal("the image is not mounted again")
	}
	if b, err := os.ReadFile(filepath.Join(v.Path, "model.bin")); err != nil || string(b) != "weights" {
		t.Errorf("data after restart: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "halfmade")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a half-made volume is left: %v", err)
	}
	if err := s2.Delete(ctx, "keep"); !errdefs.IsConflict(err) {
		t.Errorf("delete of a volume attached before the restart: %v, want a conflict", err)
	}
	// A volume whose metadata cannot be read is left alone, and its name
	// is not handed out again over its data.
	if err := os.WriteFile(filepath.Join(dir, "idle", metaFile), []byte("{garbled"), 0o600); err != nil {
		t.Fatal(err)
	}
	s3 := openStore(t, dir)
	if got := s3.List(ctx); len(got) != 1 || got[0].Name != "keep" {
		t.Errorf("volumes with one unreadable: %+v", got)
	}
	if _, _, err := s3.Create(ctx, Spec{Name: "idle", Owner: "tenant-9", SizeGB: 1}); !errdefs.IsConflict(err) {
		t.Errorf("create over an unreadable volume: %v, want a conflict", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "idle", imageFile)); err != nil {
		t.Errorf("the unreadable volume's image: %v", err)
	}
	if got := kind2.Holdings(); len(got) != 1 || got["i-1"][runtime.LabelVolumes] != "keep" {
		t.Errorf("holdings %v", got)
	}
	kind2.Release("i-1")
	if err := s2.Delete(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
}

// TestXFSDetection opens a store on XFS: with prjquota
// where the kernel allows it (volumes are then project directories),
// else, saying so, on XFS without it, where image files are used.
func TestXFSDetection(t *testing.T) {
	testenv.Require(t, "mkfs.xfs", "mount", "umount")
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 512<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-f", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v: %s", err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	mount := func(opts string) error {
		out, err := exec.Command("mount", "-o", opts, img, mnt).CombinedOutput()
		if err != nil {
			return errors.New(strings.TrimSpace(string(out)))
		}
		t.Cleanup(func() { unmountUnder(t, mnt); _ = exec.Command("umount", mnt).Run() })
		return nil
	}
	if err := mount("loop,prjquota"); err == nil {
		q, why := detectProjectQuota(mnt)
		if q == nil || q.mountPoint != mnt {
			t.Fatalf("XFS with prjquota not detected: %s", why)
		}
		return
	} else {
		t.Logf("XFS project quotas unavailable here (%v); checking the fallback on XFS without them", err)
	}
	if err := mount("loop"); err != nil {
		t.Fatalf("mount XFS: %v", err)
	}
	q, why := detectProjectQuota(filepath.Join(mnt, "volumes"))
	if q != nil || !strings.Contains(why, "without prjquota") {
		t.Fatalf("detected %+v (%s) on XFS without prjquota", q, why)
	}
	s := openStore(t, filepath.Join(mnt, "volumes"))
	if s.Backing() != backingLoop {
		t.Fatalf("backing %s", s.Backing())
	}
	if _, _, err := s.Create(context.Background(), Spec{Name: "v", Owner: "o", SizeGB: 1}); !errdefs.IsResourceExhausted(err) {
		t.Errorf("a 1 GiB volume on a 512 MiB file system: %v, want resource exhausted", err)
	}
}

func fieldOf(err error) string {
	var fe interface{ ErrorField() string }
	if errors.As(err, &fe) {
		return fe.ErrorField()
	}
	return ""
}

// TestBindSelf: a project-quota volume's directory is mounted on itself
// nosuid and nodev, so that the rentals' bind mounts are too.
func TestBindSelf(t *testing.T) {
	testenv.Require(t, "mount", "umount")
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := bindSelf(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	points, err := mountPoints()
	if err != nil {
		t.Fatal(err)
	}
	e, ok := points[dir]
	if !ok || !slices.Contains(e.Options, "nosuid") || !slices.Contains(e.Options, "nodev") {
		t.Fatalf("mount at %s: %+v (%v)", dir, e, ok)
	}
	if err := unmount(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if mounted(t, dir) {
		t.Error("still mounted")
	}
}
