package disk

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
)

// A start is refused while a small file system the test mounts has less
// free space than the reserve, and allowed once space is freed.
func TestStartRefusedBelowTheReserve(t *testing.T) {
	testenv.Require(t) // root, to mount a tmpfs
	t.Parallel()
	root := t.TempDir()
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=64m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	d := Reserve{Path: root, Bytes: 32 << 20}
	if _, err := d.Reserve(&runtime.InstanceSpec{ID: "a"}); err != nil {
		t.Fatalf("64 MiB free, 32 reserved: %v", err)
	}
	fill := filepath.Join(root, "image-layers")
	if err := os.WriteFile(fill, make([]byte, 40<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := d.Reserve(&runtime.InstanceSpec{ID: "b"})
	var fe *FullError
	if !errors.As(err, &fe) || fe.ErrorField() != "disk" || !errdefs.IsResourceExhausted(err) {
		t.Fatalf("24 MiB free, 32 reserved: %v", err)
	}
	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Reserve(&runtime.InstanceSpec{ID: "b"}); err != nil {
		t.Fatalf("after freeing: %v", err)
	}
}
