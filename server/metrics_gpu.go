package server

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime/events"
)

// GPU metrics carry dcgm-exporter's names, units and labels, so that the
// dashboards built for it work on the agent's /metrics unchanged; the
// instance_id label adds the rental holding the GPU ("" when free).
var (
	gpuLabels   = []string{"gpu", "UUID", "device", "modelName", "pci_bus_id", "instance_id"}
	dcgmGPUUtil = prometheus.NewDesc("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", gpuLabels, nil)
	dcgmFBUsed  = prometheus.NewDesc("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", gpuLabels, nil)
	dcgmFBFree  = prometheus.NewDesc("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", gpuLabels, nil)
	dcgmTemp    = prometheus.NewDesc("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", gpuLabels, nil)
	dcgmPower   = prometheus.NewDesc("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", gpuLabels, nil)
	dcgmXid     = prometheus.NewDesc("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered (0: none since the agent started).", gpuLabels, nil)
	gpuMockDesc = prometheus.NewDesc("host_agent_gpu_mock", "1 when the GPUs are a mock machine's (GPU_MOCK), named by machine; absent on real GPUs.", []string{"machine"}, nil)
)

// gpuMocker is the part of the inventory that says it is a mock machine's.
type gpuMocker interface {
	Mock() string
}

// gpuMock is the mock GPU machine s serves, or "".
func (s *Server) gpuMock() string {
	if m, ok := s.gpus.(gpuMocker); ok && s.gpus != nil {
		return m.Mock()
	}
	return ""
}

// gpuSampler is the part of the inventory that reads utilisation; the
// server's GPUInventory may lack it (a host without NVML), and then the
// DCGM series are simply absent.
type gpuSampler interface {
	Usages() []gpu.Usage
}

// gpuCollector samples every GPU at scrape time.
type gpuCollector struct{ s *Server }

func (c *gpuCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dcgmGPUUtil, dcgmFBUsed, dcgmFBFree, dcgmTemp, dcgmPower, dcgmXid, gpuMockDesc} {
		ch <- d
	}
}

func (c *gpuCollector) Collect(ch chan<- prometheus.Metric) {
	sampler, ok := c.s.gpus.(gpuSampler)
	if c.s.gpus == nil || !ok {
		return
	}
	if m := c.s.gpuMock(); m != "" {
		ch <- prometheus.MustNewConstMetric(gpuMockDesc, prometheus.GaugeValue, 1, m)
	}
	byUUID := map[string]gpu.GPU{}
	for _, g := range c.s.gpus.GPUs() {
		byUUID[g.UUID] = g
	}
	for _, u := range sampler.Usages() {
		g := byUUID[u.UUID]
		labels := []string{strconv.Itoa(u.Index), u.UUID, "nvidia" + strconv.Itoa(g.MinorNumber), g.Name, g.PCIBusID, g.HeldBy}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
		}
		gauge(dcgmGPUUtil, float64(u.UtilizationPercent))
		gauge(dcgmFBUsed, float64(u.MemoryUsedBytes>>20))
		// NVML's (v1) free memory is the total less the used.
		free := uint64(0)
		if g.MemoryTotalBytes > u.MemoryUsedBytes {
			free = g.MemoryTotalBytes - u.MemoryUsedBytes
		}
		gauge(dcgmFBFree, float64(free>>20))
		gauge(dcgmTemp, float64(u.TemperatureC))
		gauge(dcgmPower, u.PowerWatts)
		gauge(dcgmXid, float64(lastXid(g.UnhealthyReason)))
	}
	c.collectMIG(ch, byUUID)
}

// migSampler is the part of the inventory that lists MIG devices and reads
// the memory each uses.
type migSampler interface {
	MIGDevices() []gpu.MIGDevice
	MIGUsages() []gpu.Usage
}

// collectMIG adds the framebuffer series of each rented MIG device, with
// its MIG UUID, its parent's index and device node, its profile in
// modelName and the instance holding it.
func (c *gpuCollector) collectMIG(ch chan<- prometheus.Metric, byUUID map[string]gpu.GPU) {
	ms, ok := c.s.gpus.(migSampler)
	if !ok {
		return
	}
	migs := map[string]gpu.MIGDevice{}
	for _, m := range ms.MIGDevices() {
		migs[m.UUID] = m
	}
	for _, u := range ms.MIGUsages() {
		m, ok := migs[u.UUID]
		if !ok {
			continue
		}
		parent := byUUID[m.ParentUUID]
		labels := []string{strconv.Itoa(m.ParentIndex), m.UUID, "nvidia" + strconv.Itoa(parent.MinorNumber),
			parent.Name + " MIG " + m.Profile, parent.PCIBusID, m.HeldBy}
		free := uint64(0)
		if m.MemoryTotalBytes > u.MemoryUsedBytes {
			free = m.MemoryTotalBytes - u.MemoryUsedBytes
		}
		ch <- prometheus.MustNewConstMetric(dcgmFBUsed, prometheus.GaugeValue, float64(u.MemoryUsedBytes>>20), labels...)
		ch <- prometheus.MustNewConstMetric(dcgmFBFree, prometheus.GaugeValue, float64(free>>20), labels...)
	}
}

// lastXid reads the Xid out of the reason a GPU was taken out of service
// ("xid 79"); 0 for any other reason or none.
func lastXid(reason string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(reason, "xid "))
	if err != nil || !strings.HasPrefix(reason, "xid ") {
		return 0
	}
	return n
}

// startBuckets reach ten minutes: a start that pulls a large image takes
// that long.
var startBuckets = []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// PullTimer measures image pulls from the runtime's own events; it lives
// with the events (runtime/events), where the back end publishes them.
type PullTimer = events.PullTimer

// NewPullTimer is events.NewPullTimer, kept for existing callers.
func NewPullTimer(next events.Publisher) *PullTimer { return events.NewPullTimer(next) }
