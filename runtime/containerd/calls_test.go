package containerd

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/host-agent/host-agent/internal/conformance"
)

// Every call a start makes to containerd is timed by method, for GET
// /metrics.
func TestContainerdCallsAreTimed(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	r := newRuntime(t, daemon.Address, testNamespace(t), conformance.NewRecorder())
	if _, err := r.Start(ctx(t), payloadSpec("timed", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Terminate(ctx(t), "timed", 0) })
	reg := prometheus.NewRegistry()
	reg.MustRegister(r.be.Collector())
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, f := range families {
		if f.GetName() != CallDurationMetric {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["code"] == "OK" {
				counts[labels["method"]] += m.GetHistogram().GetSampleCount()
			}
		}
	}
	for _, method := range []string{"containers.v1.Containers/Create", "tasks.v1.Tasks/Create", "tasks.v1.Tasks/Start"} {
		if counts[method] == 0 {
			t.Errorf("no timed call to %s; timed: %v", method, counts)
		}
	}
}
