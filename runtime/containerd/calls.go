package containerd

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// CallDurationMetric times the back end's calls to containerd. Each start
// and terminate is a sequence of them; the histogram says which of them
// the time goes to, and which fail.
const CallDurationMetric = "host_agent_containerd_call_duration_seconds"

// newCallHistogram is CallDurationMetric by method (e.g.
// "tasks.v1.Tasks/Create") and gRPC status code.
func newCallHistogram() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    CallDurationMetric,
		Help:    "Calls to containerd (unary gRPC) by method and status code.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60},
	}, []string{"method", "code"})
}

// TimeCalls returns a gRPC interceptor recording each unary call's duration
// in h by method and code.
func TimeCalls(h *prometheus.HistogramVec) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		t0 := time.Now()
		err := invoker(ctx, method, req, reply, cc, opts...)
		h.WithLabelValues(strings.TrimPrefix(method, "/containerd.services."), status.Code(err).String()).Observe(time.Since(t0).Seconds())
		return err
	}
}

// Collector is the back end's metrics, for the agent's GET /metrics.
func (r *Runtime) Collector() prometheus.Collector { return r.calls }
