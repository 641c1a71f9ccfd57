package disk

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/host-agent/host-agent/internal/testenv"
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
// project's hard limit makes a write past it fail with EDQUOT, and a write
// outside the project goes on.
func TestProjectQuotasOnXFSLoopDevice(t *testing.T) {
	testenv.Require(t)
	plain, quota := filepath.Join(t.TempDir(), "plain"), filepath.Join(t.TempDir(), "quota")
	if why, ok := testenv.MountXFS(t, plain, "320M", ""); !ok {
		t.Fatalf("XFS without quotas cannot be mounted: %s", why)
	}
	if ok, why := ProjectQuotas(plain); ok || !strings.Contains(why, "without prjquota") {
		t.Errorf("XFS without prjquota: %v, %q", ok, why)
	}
	why, ok := testenv.MountXFS(t, quota, "320M", "prjquota")
	if !ok {
		t.Skipf("XFS with prjquota cannot be mounted here: %s", why)
	}
	if ok, why := ProjectQuotas(quota); !ok {
		t.Fatalf("XFS with prjquota: %q", why)
	}
	limited := filepath.Join(quota, "layer")
	if err := os.Mkdir(limited, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"project -s -p " + limited + " 42", "limit -p bhard=8m 42"} {
		if out, err := exec.Command("xfs_quota", "-x", "-c", cmd, quota).CombinedOutput(); err != nil {
			t.Fatalf("xfs_quota %s: %v %s", cmd, err, out)
		}
	}
	err := os.WriteFile(filepath.Join(limited, "big"), make([]byte, 16<<20), 0o600)
	if !errors.Is(err, syscall.EDQUOT) && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing 16 MiB under an 8 MiB project limit: %v, want EDQUOT or ENOSPC", err)
	}
	if err := os.WriteFile(filepath.Join(quota, "outside"), make([]byte, 16<<20), 0o600); err != nil {
		t.Fatalf("writing outside the project: %v", err)
	}
}
