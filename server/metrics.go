package server

import (
	"context"
	"strconv"
	"time"

	"github.com/labstack/echo/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/host-agent/host-agent/runtime"
)

// metricsScrapeTimeout bounds the runtime query a scrape makes.
const metricsScrapeTimeout = 2 * time.Second

// metrics are the agent's Prometheus metrics, served at GET /metrics. Each
// Server has its own registry, so tests and embedders do not share global
// state.
type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// starts times POST /start_instance's runtime call by result.
	starts *prometheus.HistogramVec
	ops    *opsMetrics
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "host_agent_http_requests_total",
			Help: "API requests by method, route and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "host_agent_http_request_duration_seconds",
			Help: "API request durations by method and route; a start's includes its image pull.",
			// Up to ten minutes: a start that pulls a large image takes that long.
			Buckets: []float64{.005, .025, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"method", "route"}),
		starts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "host_agent_instance_start_duration_seconds",
			Help:    "Starts by result (ok, error): pull, create and start, as the caller waits for them.",
			Buckets: startBuckets,
		}, []string{"result"}),
	}
	m.registry.MustRegister(
		m.requests, m.duration, m.starts,
		&gpuCollector{s: s},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stateCollector{s: s},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "host_agent_websocket_streams",
			Help: "Open GET /ws event streams.",
		}, func() float64 { return float64(s.openStreams.Load()) }),
	)
	// Both results from the start, so that the series are there before
	// the first start and rate() sees it.
	for _, r := range []string{"ok", "error"} {
		m.starts.WithLabelValues(r)
	}
	ops, opsCollectors := newOpsMetrics(s)
	m.ops = ops
	m.registry.MustRegister(opsCollectors...)
	if s.pulls != nil {
		m.registry.MustRegister(s.pulls)
	}
	m.registry.MustRegister(s.collectors...)
	return m
}

// observe records one finished request. Unmatched paths share one route
// label, so that scanning for URLs cannot grow the metrics without bound.
func (m *metrics) observe(method, route string, status int, took time.Duration) {
	if route == "" {
		route = "unmatched"
	}
	m.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(method, route).Observe(took.Seconds())
}

func (s *Server) serveMetrics(c *echo.Context) error {
	promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}).ServeHTTP(c.Response(), c.Request())
	return nil
}

// stateCollector reads the instances and GPUs at scrape time, from the
// runtime and the inventory, so the numbers are never stale or kept twice.
type stateCollector struct{ s *Server }

var (
	instancesDesc = prometheus.NewDesc("host_agent_instances",
		"Instances in the runtime's namespace by status.", []string{"status"}, nil)
	runtimeUpDesc = prometheus.NewDesc("host_agent_runtime_up",
		"Whether the container runtime answered the scrape's query.", nil, nil)
	gpusDesc = prometheus.NewDesc("host_agent_gpus",
		"The host's GPUs by state: free, held (by an instance) or unhealthy.", []string{"state"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- instancesDesc
	ch <- runtimeUpDesc
	ch <- gpusDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), metricsScrapeTimeout)
	defer cancel()
	list, err := c.s.rt.List(ctx)
	up := 0.0
	if err == nil {
		up = 1
		counts := map[runtime.Status]int{
			runtime.StatusCreated: 0, runtime.StatusRunning: 0, runtime.StatusPaused: 0,
			runtime.StatusExited: 0, runtime.StatusUnknown: 0,
		}
		for _, inst := range list {
			counts[inst.Status]++
		}
		for status, n := range counts {
			ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(n), string(status))
		}
	}
	ch <- prometheus.MustNewConstMetric(runtimeUpDesc, prometheus.GaugeValue, up)

	states := map[string]int{"free": 0, "held": 0, "unhealthy": 0}
	if c.s.gpus != nil {
		for _, g := range c.s.gpus.GPUs() {
			switch {
			case !g.Healthy:
				states["unhealthy"]++
			case g.HeldBy != "":
				states["held"]++
			default:
				states["free"]++
			}
		}
	}
	for state, n := range states {
		ch <- prometheus.MustNewConstMetric(gpusDesc, prometheus.GaugeValue, float64(n), state)
	}
}
