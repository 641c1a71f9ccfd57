package runtime

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestBandwidthLabelRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		b    Bandwidth
		want string
	}{
		{Bandwidth{}, ""},
		{Bandwidth{EgressMbps: 50}, "egress=50"},
		{Bandwidth{IngressMbps: 7}, "ingress=7"},
		{Bandwidth{EgressMbps: 50, IngressMbps: 100}, "egress=50,ingress=100"},
	} {
		if got := tc.b.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.b, got, tc.want)
		}
		back, err := ParseBandwidth(tc.want)
		if err != nil || back != tc.b {
			t.Errorf("ParseBandwidth(%q) = %+v, %v; want %+v", tc.want, back, err, tc.b)
		}
	}
	for _, bad := range []string{"egress", "egress=-1", "egress=x", "up=5", "egress=400001"} {
		if _, err := ParseBandwidth(bad); err == nil {
			t.Errorf("ParseBandwidth(%q) accepted", bad)
		}
	}
}

func TestBandwidthDefaultsFillOnlyWhatIsUnset(t *testing.T) {
	t.Parallel()
	d := BandwidthDefaults{Bandwidth{EgressMbps: 100, IngressMbps: 200}}
	spec := InstanceSpec{ID: "a", Resources: Resources{CPUs: 2, EgressMbps: 30}}
	if _, err := d.Reserve(&spec); err != nil {
		t.Fatal(err)
	}
	if got := BandwidthOf(spec); got != (Bandwidth{EgressMbps: 30, IngressMbps: 200}) {
		t.Errorf("BandwidthOf = %+v, want the rental's egress and the default ingress", got)
	}
	if spec.Enforced().CPUs != 2 {
		t.Errorf("the defaults lost the rental's CPUs: %+v", spec.Enforced())
	}
	labels := RentalLabels(spec, spec.Hash(), "agent", time.Time{})
	if labels[LabelBandwidth] != "egress=30,ingress=200" {
		t.Errorf("label %s = %q", LabelBandwidth, labels[LabelBandwidth])
	}
}

func TestHashWithoutBandwidthUnchanged(t *testing.T) {
	t.Parallel()
	a := InstanceSpec{ID: "a", Image: "i", Resources: Resources{CPUs: 1}}
	b := a
	b.Resources.EgressMbps = 50
	if a.Hash() == b.Hash() {
		t.Error("a bandwidth limit does not change the hash")
	}
	// The encoding of a spec without limits has no trace of them.
	if b, _ := json.Marshal(a.Resources); strings.Contains(string(b), "Mbps") {
		t.Errorf("resources without limits encode as %s", b)
	}
}
