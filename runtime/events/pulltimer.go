package events

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// pullBuckets reach ten minutes, as the start histogram's do: a large
// image takes that long.
var pullBuckets = []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// PullTimer measures image pulls from the runtime's own events: from
// instance.pulling to the instance.creating that follows it (or the failure
// that ends it). It sits between the runtime and the event hub, passing
// every event on, so the runtime needs no metrics of its own.
type PullTimer struct {
	next      Publisher
	now       func() time.Time
	histogram *prometheus.HistogramVec
	mu        sync.Mutex
	started   map[string]time.Time // by instance ID; guarded by mu
}

// NewPullTimer passes events on to next. Its histogram is a
// prometheus.Collector for GET /metrics.
func NewPullTimer(next Publisher) *PullTimer {
	p := &PullTimer{
		next: next,
		now:  time.Now,
		histogram: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "host_agent_image_pull_duration_seconds",
			Help:    "Image pulls by result (ok, error), from the first byte asked to the image unpacked.",
			Buckets: pullBuckets,
		}, []string{"result"}),
		started: map[string]time.Time{},
	}
	// Both results from the start, so that the series are there before
	// the first pull and rate() sees it.
	for _, r := range []string{"ok", "error"} {
		p.histogram.WithLabelValues(r)
	}
	return p
}

// Publish times the pull events and forwards every event.
func (p *PullTimer) Publish(e Event) {
	if e.InstanceID != "" {
		switch e.Type {
		case TypeInstancePulling:
			p.mu.Lock()
			p.started[e.InstanceID] = p.now()
			p.mu.Unlock()
		case TypeInstanceCreating, TypeInstanceFailed, TypeInstanceTerminated:
			p.mu.Lock()
			t0, ok := p.started[e.InstanceID]
			delete(p.started, e.InstanceID)
			p.mu.Unlock()
			if ok {
				result := "ok"
				if e.Type != TypeInstanceCreating {
					result = "error"
				}
				p.histogram.WithLabelValues(result).Observe(p.now().Sub(t0).Seconds())
			}
		}
	}
	p.next.Publish(e)
}

// Describe implements prometheus.Collector.
func (p *PullTimer) Describe(ch chan<- *prometheus.Desc) { p.histogram.Describe(ch) }

// Collect implements prometheus.Collector.
func (p *PullTimer) Collect(ch chan<- prometheus.Metric) { p.histogram.Collect(ch) }
