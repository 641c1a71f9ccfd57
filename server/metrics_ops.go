package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/server/reporter"
)

// Results of host_agent_instance_starts_total: a fixed set, so that a
// flood of bad requests cannot grow the metrics.
const (
	startOK          = "ok"
	startInvalid     = "invalid"     // the request's fault (400, 404, 413)
	startConflict    = "conflict"    // another spec under the ID, no free GPUs or ports, disk under reserve (409)
	startDraining    = "draining"    // refused: the host is drained
	startPullError   = "pull_error"  // the image could not be pulled
	startUnavailable = "unavailable" // the container runtime did not answer
	startTimeout     = "timeout"     // the runtime did not finish in time
	startError       = "error"       // anything else: the agent's own failure
)

var startResults = []string{startOK, startInvalid, startConflict, startDraining, startPullError,
	startUnavailable, startTimeout, startError}

// startResult classifies a start's outcome through the one mapping of
// errors to statuses, so that the metric and the answer agree.
func startResult(err error) string {
	if err == nil {
		return startOK
	}
	var draining *runtime.DrainingError
	if errors.As(err, &draining) {
		return startDraining
	}
	var step *runtime.StepError
	if errors.As(err, &step) && step.Step == runtime.StepPull {
		return startPullError
	}
	status, _ := classify(err)
	switch {
	case status == http.StatusConflict:
		return startConflict
	case status == http.StatusServiceUnavailable:
		return startUnavailable
	case status == http.StatusGatewayTimeout:
		return startTimeout
	case status >= 400 && status < 500:
		return startInvalid
	default:
		return startError
	}
}

// Reasons of host_agent_instance_exits_total, from instance.exited events.
const (
	exitExited    = "exited"     // the main process ended on its own
	exitOOMKilled = "oom_killed" // the kernel killed it at its memory limit
)

var exitReasons = []string{exitExited, exitOOMKilled}

// exitReason reads why an instance exited from its instance.exited event.
func exitReason(e events.Event) string {
	if e.OOMKilled {
		return exitOOMKilled
	}
	return exitExited
}

// opsMetrics are the agent's operational series: what it is, what its
// starts and rentals' exits came to.
type opsMetrics struct {
	startsTotal *prometheus.CounterVec
	exits       *prometheus.CounterVec
}

func newOpsMetrics(s *Server) (*opsMetrics, []prometheus.Collector) {
	m := &opsMetrics{
		startsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "host_agent_instance_starts_total",
			Help: "POST /start_instance requests by result: ok, invalid, conflict, draining, pull_error, unavailable, timeout, error.",
		}, []string{"result"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "host_agent_instance_exits_total",
			Help: "Rentals' exits seen by the agent (instance.exited events) by reason: exited, oom_killed.",
		}, []string{"reason"}),
	}
	// Every label value from the start, so that rate() sees the first one.
	for _, r := range startResults {
		m.startsTotal.WithLabelValues(r)
	}
	for _, r := range exitReasons {
		m.exits.WithLabelValues(r)
	}
	version := s.version
	if version == "" {
		version = "dev"
	}
	commit := s.commit
	if commit == "" {
		commit = "unknown"
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "host_agent_build_info",
		Help:        "Always 1; its labels name the agent's version, commit and container runtime.",
		ConstLabels: prometheus.Labels{"version": version, "commit": commit, "runtime": s.runtimeName},
	})
	buildInfo.Set(1)
	return m, []prometheus.Collector{m.startsTotal, m.exits, buildInfo, &drainCollector{s: s}}
}

// drainCollector reads the drained state at scrape time from where the
// runtime keeps it, as GET /readyz does.
type drainCollector struct{ s *Server }

var drainedDesc = prometheus.NewDesc("host_agent_drained",
	"1 while the host is drained (new rentals refused), else 0.", nil, nil)

func (c *drainCollector) Describe(ch chan<- *prometheus.Desc) { ch <- drainedDesc }

func (c *drainCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), metricsScrapeTimeout)
	defer cancel()
	st, err := c.s.drainStatus(ctx)
	if err != nil {
		// Unknown rather than a guess; host_agent_runtime_up says why.
		return
	}
	v := 0.0
	if st.Draining {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(drainedDesc, prometheus.GaugeValue, v)
}

// countExits counts instance.exited events from the hub until Shutdown. A
// subscription dropped for falling behind resumes where it stopped, so
// that a burst of events loses no exit and counts none twice.
func (s *Server) countExits() {
	sub, _, _ := s.hub.Subscribe(0, false)
	go func() {
		var last uint64
		count := func(e events.Event) {
			last = e.Seq
			if e.Type == events.TypeInstanceExited {
				s.metrics.ops.exits.WithLabelValues(exitReason(e)).Inc()
			}
		}
		for {
			select {
			case <-s.streamsCtx.Done():
				sub.Close()
				return
			case e, ok := <-sub.C():
				if ok {
					count(e)
					continue
				}
				var backlog []events.Event
				sub, backlog, _ = s.hub.Subscribe(last, last != 0)
				for _, e := range backlog {
					if e.Seq > last {
						count(e)
					}
				}
			}
		}
	}()
}

// HeartbeatMetrics count the reporter's rounds with the central server:
// host_agent_heartbeats_total by result and the time of the last success.
// Its Observe is the reporter's ObserveHeartbeat; it is itself a collector
// for Options.Collectors.
type HeartbeatMetrics struct {
	total       *prometheus.CounterVec
	lastSuccess prometheus.Gauge
}

var _ prometheus.Collector = (*HeartbeatMetrics)(nil)

// NewHeartbeatMetrics returns the series at zero, every result present.
func NewHeartbeatMetrics() *HeartbeatMetrics {
	h := &HeartbeatMetrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "host_agent_heartbeats_total",
			Help: "Rounds of registration and heartbeat with the central server by result: ok, unreachable, unauthorized, rejected, unknown_agent.",
		}, []string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "host_agent_last_heartbeat_success_timestamp_seconds",
			Help: "Unix time of the last heartbeat the central server accepted; 0 before the first.",
		}),
	}
	for _, r := range reporter.HeartbeatResults {
		h.total.WithLabelValues(r)
	}
	return h
}

// Observe counts one round.
func (h *HeartbeatMetrics) Observe(result string, at time.Time) {
	h.total.WithLabelValues(result).Inc()
	if result == reporter.HeartbeatOK {
		h.lastSuccess.Set(float64(at.UnixNano()) / 1e9)
	}
}

// Describe implements prometheus.Collector.
func (h *HeartbeatMetrics) Describe(ch chan<- *prometheus.Desc) {
	h.total.Describe(ch)
	h.lastSuccess.Describe(ch)
}

// Collect implements prometheus.Collector.
func (h *HeartbeatMetrics) Collect(ch chan<- prometheus.Metric) {
	h.total.Collect(ch)
	h.lastSuccess.Collect(ch)
}
