package backend

import (
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/host-agent/host-agent/runtime"
)

// The confinement every rental gets, on either back end, and the most it
// may have. Each back end applies it in its own words (an OCI spec on
// containerd, a host config on Docker) and checks the final object with
// these same functions, so that the policy is written once.

// RentalCapabilities are the capabilities of a rental's processes, in
// every set: the runtimes' default set (the same 14 on containerd and
// Docker) without CAP_NET_RAW, with which a tenant could forge packets on
// the rentals' bridge or poison a neighbour's ARP entry. Ping still works
// through ICMP sockets (RentalSysctls).
var RentalCapabilities = []string{
	"CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
	"CAP_SYS_CHROOT",
}

// DroppedCapabilities are what the runtimes' defaults grant and rentals
// do not get.
var DroppedCapabilities = []string{"CAP_NET_RAW"}

// pingGroupRange lets every group open ICMP echo sockets, so that ping
// works without CAP_NET_RAW.
const pingGroupRange = "0 2147483647"

var hostIPv6 = sync.OnceValue(func() bool {
	_, err := os.Stat("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err == nil
})

// RentalSysctls are the sysctls set in every rental's own namespaces, and
// the only ones a rental may have: ICMP sockets for every group, and IPv6
// off (rentals' networks are IPv4 only, and a link-local address would
// reach the bridge's other ports past every IPv4 rule). The IPv6 keys are
// left out on a host whose kernel has no IPv6, where they do not exist.
func RentalSysctls() map[string]string {
	m := map[string]string{"net.ipv4.ping_group_range": pingGroupRange}
	if hostIPv6() {
		m["net.ipv6.conf.all.disable_ipv6"] = "1"
		m["net.ipv6.conf.default.disable_ipv6"] = "1"
	}
	return m
}

// CapabilityProblem says what is wrong with one of a process's capability
// sets (named set: bounding, effective, ...), or "": it may hold nothing
// but RentalCapabilities.
func CapabilityProblem(set string, caps []string) string {
	var extra []string
	for _, c := range caps {
		name := strings.ToUpper(c)
		if !strings.HasPrefix(name, "CAP_") {
			name = "CAP_" + name
		}
		if !slices.Contains(RentalCapabilities, name) {
			extra = append(extra, name)
		}
	}
	if len(extra) == 0 {
		return ""
	}
	slices.Sort(extra)
	return fmt.Sprintf("capabilities beyond the rental's in the %s set: %s", set, strings.Join(slices.Compact(extra), ","))
}

// SysctlProblem says what is wrong with a rental's sysctls, or "": each
// must be one of RentalSysctls, with its value.
func SysctlProblem(sysctls map[string]string) string {
	want := RentalSysctls()
	var bad []string
	for _, k := range slices.Sorted(maps.Keys(sysctls)) {
		if v, ok := want[k]; !ok || v != sysctls[k] {
			bad = append(bad, k+"="+sysctls[k])
		}
	}
	if len(bad) == 0 {
		return ""
	}
	return "sysctls not allowed: " + strings.Join(bad, ", ")
}

// WorkingDirProblem says why a rental may not start in dir (from the
// request or the image's WORKDIR), or "". Anything under /proc is refused:
// /proc/self/fd/N is how CVE-2024-21626 leaks a host directory into the
// container on runc before 1.1.12, and no image needs to start there.
func WorkingDirProblem(dir string) string {
	if dir == "" {
		return ""
	}
	if !path.IsAbs(dir) {
		return fmt.Sprintf("working directory %q is not absolute", dir)
	}
	if c := path.Clean(dir); c == "/proc" || strings.HasPrefix(c, "/proc/") {
		return fmt.Sprintf("working directory %q is under /proc", dir)
	}
	return ""
}

// ImageWorkingDirError refuses an image whose WORKDIR WorkingDirProblem
// refuses, as bad input naming the image field; nil when it is fine.
func ImageWorkingDirError(dir string) error {
	if p := WorkingDirProblem(dir); p != "" {
		return runtime.FieldError("image", "the image's "+p)
	}
	return nil
}
