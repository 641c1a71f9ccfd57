package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/runtime/backend"
)

// A tenant writing without pause must not fill the provider's disk, so each
// instance's log is capped: once it holds more than LogMaxBytes, its oldest
// part is cut away, keeping about half. The shim appends (O_APPEND) to the
// file, so it is shortened in place from the front, which concurrent appends
// survive: FALLOC_FL_COLLAPSE_RANGE where the file system has it (ext4,
// XFS), else a punched hole, which frees the blocks and keeps the size.

// capLogs checks every log file now and then until ctx is done.
func (r *Runtime) capLogs(ctx context.Context) {
	backend.Every(ctx, r.opts.LogCheckInterval, func(context.Context) {
		paths, err := filepath.Glob(filepath.Join(r.opts.LogDir, "*.log"))
		if err != nil {
			return
		}
		for _, p := range paths {
			if cut, err := capLog(p, r.opts.LogMaxBytes); err != nil {
				r.log.Warn("cap instance log", "path", p, "error", err)
			} else if cut > 0 {
				r.log.Info("capped instance log", "path", p, "dropped_bytes", cut)
			}
		}
	})
}

// capLog drops the oldest part of the file at path when it occupies more
// than max bytes on disk, and returns how many bytes it dropped.
func capLog(path string, max int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("no stat of %s", path)
	}
	if st.Blocks*512 <= max {
		return 0, nil
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return 0, err
	}
	block := sfs.Bsize
	if block <= 0 {
		block = 4096
	}
	cut := (fi.Size() - max/2) / block * block
	if cut <= 0 {
		return 0, nil
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, cut)
	if err == nil {
		return cut, nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) {
		return 0, fmt.Errorf("collapse the start of %s: %w", path, err)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, cut); err != nil {
		return 0, fmt.Errorf("punch the start of %s: %w", path, err)
	}
	return cut, nil
}
