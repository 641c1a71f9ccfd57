package volume

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// commandTimeout bounds mkfs, mount and xfs_quota.
const commandTimeout = 2 * time.Minute

// run runs a command, its output in the error.
func run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// makeImage makes a sparse file of size bytes holding an empty ext4 file
// system, with no blocks reserved for root (the tenant gets all of it).
func makeImage(ctx context.Context, path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return run(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", path)
}

// mountImage loop-mounts an image file on dir. mount(8) sets the loop
// device up to be freed when it is unmounted.
func mountImage(ctx context.Context, image, dir string) error {
	return run(ctx, "mount", "-t", "ext4", "-o", "loop,nosuid,nodev", image, dir)
}

// bindSelf bind-mounts dir on itself, nosuid and nodev.
func bindSelf(ctx context.Context, dir string) error {
	if err := run(ctx, "mount", "--bind", dir, dir); err != nil {
		return err
	}
	if err := run(ctx, "mount", "-o", "remount,bind,nosuid,nodev", dir); err != nil {
		_ = unmount(ctx, dir)
		return err
	}
	return nil
}

// unmount unmounts dir.
func unmount(ctx context.Context, dir string) error {
	return run(ctx, "umount", dir)
}

// isMountPoint reports whether something is mounted on dir, from
// /proc/self/mountinfo.
func isMountPoint(dir string) (bool, error) {
	points, err := mountPoints()
	if err != nil {
		return false, err
	}
	_, ok := points[filepath.Clean(dir)]
	return ok, nil
}

// mountEntry is one line of mountinfo, as far as the store needs it.
type mountEntry struct {
	Point   string
	FSType  string
	Options []string // the mount's and the super block's
}

// mountPoints reads /proc/self/mountinfo, by mount point (the last mount
// on a point wins).
func mountPoints() (map[string]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMountInfo(b), nil
}

// parseMountInfo reads mountinfo lines: "36 35 98:0 /mnt1 /mnt2 rw,noatime
// master:1 - ext3 /dev/root rw,errors=continue".
func parseMountInfo(b []byte) map[string]mountEntry {
	out := map[string]mountEntry{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || len(fields) < sep+4 {
			continue
		}
		e := mountEntry{Point: unescapeMountInfo(fields[4]), FSType: fields[sep+1]}
		e.Options = append(strings.Split(fields[5], ","), strings.Split(fields[sep+3], ",")...)
		out[e.Point] = e
	}
	return out
}

// unescapeMountInfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountInfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountOf is the mount holding path: the longest mount point that is path
// or above it.
func mountOf(points map[string]mountEntry, path string) (mountEntry, bool) {
	var best mountEntry
	found := false
	for p, e := range points {
		if (p == "/" || path == p || strings.HasPrefix(path, p+"/")) && (!found || len(p) > len(best.Point)) {
			best, found = e, true
		}
	}
	return best, found
}

// freeBytes is what an unprivileged writer may still write under dir.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// allocatedBytes is what a (sparse) file takes on disk.
func allocatedBytes(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// usedBytes is what the files of a volume take: its file system's used
// blocks for an image of its own, the blocks of every file under dir
// where the volume shares its file system (walk). -1 when unreadable.
func usedBytes(dir string, walk bool) int64 {
	if !walk {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			return -1
		}
		return int64(st.Blocks-st.Bfree) * int64(st.Bsize)
	}
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			}
		}
		return nil
	})
	if err != nil {
		return -1
	}
	return total
}
