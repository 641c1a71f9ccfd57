package docker

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// On a dockerd whose data root is XFS with project quotas (a loop device
// the test makes), disk limits are hard: a rental with disk_gb 1 writing
// 2 GiB gets ENOSPC/EDQUOT inside after about 1 GiB, a second rental writes
// normally, and the file system stays above the reserve. Where the kernel
// cannot mount XFS with prjquota, the test skips with the kernel's message.
func TestHardDiskLimitOnXFS(t *testing.T) {
	testenv.Require(t, integrationBinaries...)
	bin := testenv.DebianDockerd()
	if bin == "" {
		testenv.Unavailable(t, "Debian's dockerd (docker.io) is not installed")
	}
	dir, err := os.MkdirTemp("", "ha-xq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if why, ok := testenv.MountXFS(t, filepath.Join(dir, "d", "data"), "3G", "prjquota"); !ok {
		t.Skipf("XFS with prjquota cannot be mounted here: %s", why)
	}
	needContainerd(t)
	needPayload(t)
	d, err := testenv.StartDockerd(filepath.Join(dir, "d"), testenv.DockerdOptions{Bin: bin, Containerd: containerd.Address})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	r, err := New(Options{Host: d.Host, AgentID: "disk", StateDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, e, err := r.DiskEnforcement(ctx)
	if err != nil || e.Mode != disk.ModeHard {
		t.Fatalf("enforcement on overlay2 over XFS with prjquota: %+v %v", e, err)
	}
	const reserve = 256 << 20
	l := lifecycle.New(r, lifecycle.Options{
		Kinds:  []runtime.Admission{&disk.Limits{Path: root, ReserveBytes: reserve, Used: r.DiskUsed}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ReconcileInterval: -1,
	})
	t.Cleanup(func() { l.Close() })
	big := runtime.InstanceSpec{ID: "xfs-big", Image: payloadRef, Command: []string{"fill", "/big", "2048", "sleep", "inf"},
		Resources: runtime.Resources{DiskGB: 1}}
	small := runtime.InstanceSpec{ID: "xfs-small", Image: payloadRef, Command: []string{"fill", "/small", "256", "sleep", "inf"},
		Resources: runtime.Resources{DiskGB: 1}}
	for _, s := range []runtime.InstanceSpec{big, small} {
		if _, err := l.Start(ctx, s); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Terminate(context.Background(), s.ID, time.Second) })
	}
	logs := waitForLog(t, l, big.ID, "fill /big: ")
	m := regexp.MustCompile(`error after (\d+) MiB: .*(quota|no space)`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("writing 2 GiB under a 1 GiB limit: %q, want ENOSPC or EDQUOT", logs)
	}
	if n, _ := strconv.Atoi(m[1]); n < 900 || n > 1100 {
		t.Errorf("the write failed after %d MiB, want about 1024", n)
	}
	if logs := waitForLog(t, l, small.ID, "fill /small: "); !strings.Contains(logs, "wrote 256 MiB") {
		t.Errorf("the second rental: %q, want 256 MiB written", logs)
	}
	if free, err := disk.Free(root); err != nil || free < reserve {
		t.Errorf("free space at %s: %d %v, want at least the reserve %d", root, free, err, reserve)
	}
}

// waitForLog waits until the instance's output contains want and returns
// it.
func waitForLog(t *testing.T, rt runtime.Runtime, id, want string) string {
	t.Helper()
	var logs string
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		b, _, err := rt.Logs(context.Background(), id, 100)
		if logs = string(b); err == nil && strings.Contains(logs, want) {
			return logs
		}
	}
	t.Fatalf("logs of %s never showed %q: %q", id, want, logs)
	return ""
}
