package network

import (
	goruntime "runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/internal/testenv"
)

// In a container /proc/sys is read-only; the agent makes /proc/sys/net
// writable in its own mount namespace before it writes the bridge's
// settings. The test makes a mount namespace of its own (on a thread that
// is thrown away after), with /proc/sys/net read-only as Docker leaves it.
func TestReadOnlyProcSysNetMadeWritable(t *testing.T) {
	testenv.Require(t) // root, for a mount namespace
	errc := make(chan error, 1)
	var before, after unix.Statfs_t
	go func() {
		// Never unlocked: the thread, in the test's mount namespace, ends
		// with the goroutine.
		goruntime.LockOSThread()
		step := func(err error) bool {
			if err != nil {
				errc <- err
				return false
			}
			return true
		}
		if !step(unix.Unshare(unix.CLONE_NEWNS)) ||
			!step(unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")) ||
			!step(unix.Mount(procSysNet, procSysNet, "", unix.MS_BIND, "")) ||
			!step(unix.Mount("", procSysNet, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, "")) ||
			!step(unix.Statfs(procSysNet, &before)) ||
			!step(WritableProcSysNet()) {
			return
		}
		errc <- unix.Statfs(procSysNet, &after)
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if before.Flags&unix.ST_RDONLY == 0 {
		t.Fatal("the test's /proc/sys/net was not read-only to begin with")
	}
	if after.Flags&unix.ST_RDONLY != 0 {
		t.Fatal("/proc/sys/net is still read-only")
	}
}
