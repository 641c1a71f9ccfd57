package network

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// procSysNet is where the kernel's network settings are written: the
// agent's for the bridge, the CNI plugins' (which it runs) for forwarding
// and each rental's interface.
const procSysNet = "/proc/sys/net"

// WritableProcSysNet makes /proc/sys/net writable when it is read-only, as a
// container's /proc/sys is (Docker mounts it read-only even with the host's
// network). Only in the agent's own mount namespace, and only /proc/sys/net:
// a bind mount of it onto itself, remounted read-write, which needs the
// CAP_SYS_ADMIN the containerized agent holds to pin network namespaces.
// On a host, where it is writable already, it does nothing.
func WritableProcSysNet() error {
	var st unix.Statfs_t
	if err := unix.Statfs(procSysNet, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", procSysNet, err)
	}
	if st.Flags&unix.ST_RDONLY == 0 {
		return nil
	}
	if err := unix.Mount(procSysNet, procSysNet, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("%s is read-only and cannot be bound writable (the agent needs CAP_SYS_ADMIN and no AppArmor mount rule against it): %w", procSysNet, err)
	}
	if err := unix.Mount("", procSysNet, "", unix.MS_REMOUNT|unix.MS_BIND, ""); err != nil {
		_ = unix.Unmount(procSysNet, unix.MNT_DETACH)
		return fmt.Errorf("%s is read-only and cannot be remounted writable: %w", procSysNet, err)
	}
	return nil
}
