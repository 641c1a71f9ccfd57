package containerd

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
)

// A pull that fills the disk: containerd's root is a small file system the
// test mounts, the image is bigger. The start fails as disk_full, saying
// so, and leaves nothing: no container, snapshot, image or lease, and the
// space is free again for the next start.
func TestPullFillingTheDiskLeavesNothing(t *testing.T) {
	testenv.Require(t, "containerd", "containerd-shim-runc-v2", "runc")
	needPayload(t)
	t.Parallel()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=48m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	ctd, err := testenv.StartContainerd(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctd.Close() })
	big, err := registry.PushPayloadWithPadding("diskfull:big", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	ns := testNamespace(t)
	r := newRuntime(t, ctd.Address, ns, conformance.NewRecorder())
	_, err = r.Start(ctx(t), runtime.InstanceSpec{ID: "big", Image: big, Command: []string{"sleep", "inf"}})
	var pe *runtime.PullError
	if !errors.As(err, &pe) || pe.Kind != runtime.PullDiskFull || !errdefs.IsResourceExhausted(err) || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("start of an image bigger than the disk: %v (%T), want a disk_full pull error", err, err)
	}
	cl, cctx := rawClient(t, ctd.Address, ns)
	if cs, _ := cl.Containers(cctx); len(cs) != 0 {
		t.Errorf("containers left: %d", len(cs))
	}
	if imgs, _ := cl.ImageService().List(cctx); len(imgs) != 0 {
		t.Errorf("images left: %d", len(imgs))
	}
	if ls, _ := cl.LeasesService().List(cctx); len(ls) != 0 {
		t.Errorf("leases left: %v", ls)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}
	if free := st.Bavail * uint64(st.Bsize); free < 40<<20 {
		t.Errorf("%d MiB free on the 48 MiB root after the failed pull: the partial layer was kept", free>>20)
	}
	// The small image still fits.
	if _, err := r.Start(ctx(t), payloadSpec("small", "sleep", "inf")); err != nil {
		t.Fatalf("start after the failed pull: %v", err)
	}
}
