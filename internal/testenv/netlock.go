package testenv

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// hostNetworkLock is the file tests that change the host's network hold.
const hostNetworkLock = "/run/host-agent-tests/network.lock"

// LockHostNetwork holds, until the test ends, the lock of tests that change
// the host's network (namespaces, veths, routes such as the metadata
// address's) or count what is on it: test packages run at once, and one's
// peers would clash with another's routes or skew its counts.
func LockHostNetwork(tb testing.TB) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(hostNetworkLock), 0o755); err != nil {
		tb.Fatal(err)
	}
	f, err := os.OpenFile(hostNetworkLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	})
}
