package runtime

import (
	"os"
	"syscall"
)

// fileOwner is the uid that owns fi's file, where the platform says.
func fileOwner(fi os.FileInfo) (uint32, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Uid, true
}

// isDevNull reports whether path is the host's /dev/null (c 1:3).
func isDevNull(path string, fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && path == "/dev/null" && fi.Mode()&os.ModeCharDevice != 0 && st.Rdev == 0x103
}
