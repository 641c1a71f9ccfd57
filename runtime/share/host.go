package share

import "github.com/host-agent/host-agent/runtime/hostinfo"

// HostMemoryMB reads the host's memory (MemTotal) from meminfo, normally
// /proc/meminfo.
func HostMemoryMB(meminfo string) (int64, error) {
	m, err := hostinfo.ReadMemory(meminfo)
	if err != nil {
		return 0, err
	}
	return int64(m.TotalBytes >> 20), nil
}
