package hostinfo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Memory is meminfo's MemTotal and MemAvailable, in bytes.
type Memory struct {
	TotalBytes     uint64
	AvailableBytes uint64
}

// ReadMemory reads MemTotal and MemAvailable from a meminfo file, normally
// /proc/meminfo.
func ReadMemory(meminfo string) (Memory, error) {
	b, err := os.ReadFile(meminfo)
	if err != nil {
		return Memory{}, err
	}
	var info Memory
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch k {
		case "MemTotal":
			dst = &info.TotalBytes
		case "MemAvailable":
			dst = &info.AvailableBytes
		default:
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return info, fmt.Errorf("%s: parse %s %q: %w", meminfo, k, fields[0], err)
		}
		if len(fields) > 1 && fields[1] == "kB" {
			n *= 1024
		}
		*dst = n
	}
	if info.TotalBytes == 0 {
		return info, fmt.Errorf("%s has no MemTotal", meminfo)
	}
	return info, nil
}

// FreeBytes returns the bytes an unprivileged writer may still use on the
// file system holding path (df's "Avail"). An error wraps the errno, so
// that errors.Is(err, fs.ErrNotExist) tells a missing path.
func FreeBytes(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// Disk is the size of a file system.
type Disk struct {
	// Path is the directory measured.
	Path       string
	TotalBytes uint64
	// FreeBytes is what an unprivileged writer may still use, as df's
	// "Avail" column shows it.
	FreeBytes uint64
}

// ReadDisk measures the file system holding dir. A directory that does
// not exist (yet) is measured at its nearest existing parent, which is
// where it would be created.
func ReadDisk(dir string) (Disk, error) {
	p := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			bsize := uint64(st.Bsize)
			return Disk{Path: p, TotalBytes: st.Blocks * bsize, FreeBytes: st.Bavail * bsize}, nil
		}
		parent := filepath.Dir(p)
		if !errors.Is(err, fs.ErrNotExist) || parent == p {
			return Disk{}, fmt.Errorf("statfs %s: %w", p, err)
		}
		p = parent
	}
}

// CPUs is the number of logical CPUs the agent can use.
func CPUs() int { return goruntime.NumCPU() }
