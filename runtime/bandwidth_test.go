package runtime

import (
	"encoding/json"
	"strings"
	"testing"
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
