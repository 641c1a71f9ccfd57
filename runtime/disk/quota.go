package disk

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// How disk limits are enforced (Enforcement.Mode).
const (
	// ModeHard: the file system refuses writes past the limit inside the
	// rental (ENOSPC/EDQUOT); nothing else is affected.
	ModeHard = "hard"
	// ModeWatched: the Watcher measures writable layers and stops a
	// rental over its limit.
	ModeWatched = "watched"
)

// Enforcement says how disk limits are enforced on this host, and why.
type Enforcement struct {
	Mode string `json:"mode"`
	Why  string `json:"why"`
}

// xfsMagic is XFS's f_type (XFS_SUPER_MAGIC).
const xfsMagic = 0x58465342

// ProjectQuotas reports whether the file system holding path is XFS
// mounted with project quotas (prjquota), on which overlayfs writable
// layers can be limited the way Docker's overlay2 limits them (size=). why
// says what was found either way. The test machines' kernels build XFS
// without quotas: there `mount -o prjquota` fails ("quota support not
// available in this kernel") and this reports false.
func ProjectQuotas(path string) (ok bool, why string) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Sprintf("cannot read the file system at %s: %v", path, err)
	}
	m, err := mountOf("/proc/self/mountinfo", path)
	if err != nil {
		return false, fmt.Sprintf("cannot read the mount of %s: %v", path, err)
	}
	if uint64(st.Type) != xfsMagic {
		return false, fmt.Sprintf("%s is on %s (%s), which has no project quotas the agent can use: only XFS mounted with prjquota has", path, m.fsType, m.point)
	}
	if !m.projectQuota() {
		return false, fmt.Sprintf("%s is on XFS (%s) mounted without prjquota (options %s)", path, m.point, m.superOpts)
	}
	return true, fmt.Sprintf("%s is on XFS (%s) mounted with project quotas", path, m.point)
}

type mount struct {
	point, fsType, superOpts string
}

func (m mount) projectQuota() bool {
	for _, o := range strings.Split(m.superOpts, ",") {
		switch o {
		case "prjquota", "pquota", "pqnoenforce":
			return o != "pqnoenforce"
		}
	}
	return false
}

// mountOf finds, in a mountinfo file, the mount that holds path: the last
// mount whose mount point is path or one of its parents.
func mountOf(mountinfo, path string) (mount, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return mount{}, err
	}
	if p, err := filepath.EvalSymlinks(abs); err == nil {
		abs = p
	}
	f, err := os.Open(mountinfo)
	if err != nil {
		return mount{}, err
	}
	defer f.Close()
	var found mount
	ok := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, cut := strings.Cut(sc.Text(), " - ")
		if !cut {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 3 {
			continue
		}
		point := unescapeMount(a[4])
		if point == abs || point == "/" || strings.HasPrefix(abs, strings.TrimSuffix(point, "/")+"/") {
			if !ok || len(point) >= len(found.point) {
				found, ok = mount{point: point, fsType: b[0], superOpts: b[2]}, true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return mount{}, err
	}
	if !ok {
		return mount{}, fmt.Errorf("no mount holds %s", abs)
	}
	return found, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// SnapshotterEnforcement is how disk limits are enforced for containerd's
// overlayfs snapshotter with its root at root: watched, since the
// snapshotter sets no quota on a writable layer; why says what the file
// system would allow.
func SnapshotterEnforcement(root string) Enforcement {
	ok, why := ProjectQuotas(root)
	if ok {
		why += ", but containerd's overlayfs snapshotter sets no project quota on a writable layer"
	}
	return Enforcement{Mode: ModeWatched, Why: why + "; the agent measures writable layers and stops a rental over its limit"}
}
