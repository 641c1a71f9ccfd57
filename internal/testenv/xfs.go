package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// MountXFS makes an XFS file system of size (truncate's syntax, "3G") in an
// image file under t's temporary directory and mounts it on dir with
// options (e.g. "prjquota"), unmounted when t ends. When the mount fails it
// returns why, in the kernel's words where the kernel log has them (the
// test machines' kernels build XFS without quotas: "quota support not
// available in this kernel"), so that the test can skip with it.
func MountXFS(t *testing.T, dir, size, options string) (why string, ok bool) {
	t.Helper()
	Require(t, "mkfs.xfs", "xfs_quota", "mount", "umount", "truncate")
	img := filepath.Join(t.TempDir(), "xfs.img")
	if out, err := exec.Command("truncate", "-s", size, img).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v %s", err, out)
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	opts := "loop"
	if options != "" {
		opts += "," + options
	}
	if out, err := exec.Command("mount", "-o", opts, img, dir).CombinedOutput(); err != nil {
		return kernelXFSMessage(strings.TrimSpace(string(out))), false
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return "", true
}

// kernelXFSMessage is the kernel's last word on XFS, from its log, or
// fallback.
func kernelXFSMessage(fallback string) string {
	out, err := exec.Command("dmesg").Output()
	if err != nil {
		return fallback
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i := len(lines) - 1; i >= 0 && i >= len(lines)-20; i-- {
		if strings.Contains(lines[i], "XFS") {
			if _, msg, ok := strings.Cut(lines[i], "] "); ok {
				return msg
			}
			return lines[i]
		}
	}
	return fallback
}
