package lifecycle

import (
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

func TestBandwidthDefaultsFillOnlyWhatIsUnset(t *testing.T) {
	t.Parallel()
	d := BandwidthDefaults{runtime.Bandwidth{EgressMbps: 100, IngressMbps: 200}}
	spec := runtime.InstanceSpec{ID: "a", Resources: runtime.Resources{CPUs: 2, EgressMbps: 30}}
	if _, err := d.Reserve(&spec); err != nil {
		t.Fatal(err)
	}
	if got := runtime.BandwidthOf(spec); got != (runtime.Bandwidth{EgressMbps: 30, IngressMbps: 200}) {
		t.Errorf("BandwidthOf = %+v, want the rental's egress and the default ingress", got)
	}
	if spec.Enforced().CPUs != 2 {
		t.Errorf("the defaults lost the rental's CPUs: %+v", spec.Enforced())
	}
	labels := runtime.RentalLabels(spec, spec.Hash(), "agent", time.Time{})
	if labels[runtime.LabelBandwidth] != "egress=30,ingress=200" {
		t.Errorf("label %s = %q", runtime.LabelBandwidth, labels[runtime.LabelBandwidth])
	}
}
