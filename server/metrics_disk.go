package server

import "github.com/prometheus/client_golang/prometheus"

var (
	diskFreeDesc = prometheus.NewDesc("host_agent_disk_free_bytes",
		"Bytes free (as df's Avail) on the file system the container runtime keeps images and writable layers on.", nil, nil)
	diskReserveDesc = prometheus.NewDesc("host_agent_disk_reserve_bytes",
		"Starts are refused while host_agent_disk_free_bytes is below this (DISK_RESERVE_GB); 0: no reserve.", nil, nil)
)

// DiskCollector reports the free space of the runtime's data directory,
// read at scrape time with free (disk.Free provides it), next to the
// reserve below which starts are refused.
func DiskCollector(path string, reserve uint64, free func(path string) (uint64, error)) prometheus.Collector {
	return &diskCollector{path: path, reserve: reserve, free: free}
}

type diskCollector struct {
	path    string
	reserve uint64
	free    func(string) (uint64, error)
}

func (c *diskCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- diskFreeDesc
	ch <- diskReserveDesc
}

func (c *diskCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(diskReserveDesc, prometheus.GaugeValue, float64(c.reserve))
	// A path that cannot be read has no value rather than a false 0.
	if n, err := c.free(c.path); err == nil {
		ch <- prometheus.MustNewConstMetric(diskFreeDesc, prometheus.GaugeValue, float64(n))
	}
}
