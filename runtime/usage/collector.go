package usage

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	descCPU = prometheus.NewDesc("host_agent_instance_cpu_seconds_total",
		"CPU time a rental's processes used since its start.", []string{"instance_id"}, nil)
	descMemoryMax = prometheus.NewDesc("host_agent_instance_memory_max_bytes",
		"The most memory a rental held at once.", []string{"instance_id"}, nil)
	descRx = prometheus.NewDesc("host_agent_instance_net_rx_bytes_total",
		"Bytes a rental's network interface received.", []string{"instance_id"}, nil)
	descTx = prometheus.NewDesc("host_agent_instance_net_tx_bytes_total",
		"Bytes a rental's network interface sent.", []string{"instance_id"}, nil)
	descDisk = prometheus.NewDesc("host_agent_instance_disk_used_bytes",
		"The most a rental's writable layer held (0 where the back end cannot measure it).", []string{"instance_id"}, nil)
	descGPU = prometheus.NewDesc("host_agent_instance_gpu_seconds_total",
		"GPUs a rental holds times the seconds it ran.", []string{"instance_id"}, nil)
)

// Collector serves the Meter's figures as Prometheus series labelled by
// instance_id; a rental's series go with its record.
func (m *Meter) Collector() prometheus.Collector { return collector{m} }

type collector struct{ m *Meter }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCPU, descMemoryMax, descRx, descTx, descDisk, descGPU} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for id, u := range c.m.All() {
		ch <- prometheus.MustNewConstMetric(descCPU, prometheus.CounterValue, u.CPUSeconds, id)
		ch <- prometheus.MustNewConstMetric(descMemoryMax, prometheus.GaugeValue, float64(u.MemoryMaxBytes), id)
		ch <- prometheus.MustNewConstMetric(descRx, prometheus.CounterValue, float64(u.NetRxBytes), id)
		ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, float64(u.NetTxBytes), id)
		ch <- prometheus.MustNewConstMetric(descDisk, prometheus.GaugeValue, float64(u.DiskUsedBytes), id)
		ch <- prometheus.MustNewConstMetric(descGPU, prometheus.CounterValue, u.GPUSeconds, id)
	}
}
