package disk

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/host-agent/host-agent/runtime/testenv"
)

func TestMountOf(t *testing.T) {
	t.Parallel()
	info := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(info, []byte(
		"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"+
			"30 22 8:2 / /var/lib/containerd rw,relatime shared:2 - xfs /dev/sdb1 rw,attr2,inode64,prjquota\n"+
			"31 22 8:3 / /var/lib/containerd2 rw - xfs /dev/sdc1 rw,noquota\n"+
			"32 22 8:4 / /mnt/with\\040space rw - xfs /dev/sdd1 rw,pquota\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]struct {
		point string
		prj   bool
	}{
		"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs": {"/var/lib/containerd", true},
		"/var/lib/containerd2/x":                                     {"/var/lib/containerd2", false},
		"/var/lib":                                                   {"/", false},
		"/mnt/with space/d":                                          {"/mnt/with space", true},
	} {
		m, err := mountOf(info, path)
		if err != nil {
			t.Fatal(err)
		}
		if m.point != want.point || m.projectQuota() != want.prj {
			t.Errorf("%s: mount %+v (project quota %v), want %s %v", path, m, m.projectQuota(), want.point, want.prj)
		}
	}
}

// The file system the tests run on (ext4 here) is reported as having no
// project quotas, naming its type.
func TestProjectQuotasNotOnThisFileSystem(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ok, why := ProjectQuotas(dir)
	if ok || !strings.Contains(why, "no project quotas") && !strings.Contains(why, "without prjquota") {
		t.Fatalf("ProjectQuotas(%s) = %v, %q", dir, ok, why)
	}
}

// An XFS file system on a loop device is told apart mounted without and
// with prjquota. Where the kernel has no XFS quotas the prjquota mount
// fails, and the test skips with the kernel's message; where it has, a
// project's hard limit makes a write past it fail with EDQUOT.
func TestProjectQuotasOnXFSLoopDevice(t *testing.T) {
	testenv.Require(t)
	for _, tool := range []string{"mkfs.xfs", "xfs_quota", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v (xfsprogs)", tool, err)
		}
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "xfs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) ([]byte, error) { return exec.Command(name, args...).CombinedOutput() }
	if out, err := run("truncate", "-s", "320M", img); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	if out, err := run("mkfs.xfs", "-q", img); err != nil {
		t.Fatalf("mkfs.xfs: %v %s", err, out)
	}
	if out, err := run("mount", "-o", "loop", img, mnt); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	if ok, why := ProjectQuotas(mnt); ok || !strings.Contains(why, "without prjquota") {
		t.Errorf("XFS without prjquota: %v, %q", ok, why)
	}
	if out, err := run("umount", mnt); err != nil {
		t.Fatalf("umount: %v %s", err, out)
	}
	if out, err := run("mount", "-o", "loop,prjquota", img, mnt); err != nil {
		t.Skipf("XFS with prjquota cannot be mounted here: %s", kernelMessage(string(out)))
	}
	t.Cleanup(func() { _, _ = run("umount", mnt) })
	ok, why := ProjectQuotas(mnt)
	if !ok {
		t.Fatalf("XFS with prjquota: %q", why)
	}
	limited := filepath.Join(mnt, "layer")
	if err := os.Mkdir(limited, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"project -s -p " + limited + " 42", "limit -p bhard=8m 42"} {
		if out, err := run("xfs_quota", "-x", "-c", cmd, mnt); err != nil {
			t.Fatalf("xfs_quota %s: %v %s", cmd, err, out)
		}
	}
	err := os.WriteFile(filepath.Join(limited, "big"), make([]byte, 16<<20), 0o600)
	if !errors.Is(err, syscall.EDQUOT) && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing 16 MiB under an 8 MiB project limit: %v, want EDQUOT or ENOSPC", err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "outside"), make([]byte, 16<<20), 0o600); err != nil {
		t.Fatalf("writing outside the project: %v", err)
	}
}

// kernelMessage is the kernel's last word on XFS (from the kernel log),
// which says why a mount failed better than mount(8) does.
func kernelMessage(mountOut string) string {
	out, err := exec.Command("dmesg").Output()
	if err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		for i := len(lines) - 1; i >= 0 && i >= len(lines)-20; i-- {
			if strings.Contains(lines[i], "XFS") {
				if _, msg, ok := strings.Cut(lines[i], "] "); ok {
					return msg
				}
				return lines[i]
			}
		}
	}
	return strings.TrimSpace(mountOut)
}
