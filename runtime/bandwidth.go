package runtime

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxBandwidthMbps bounds a rental's egress and ingress limits: 400 Gbit/s,
// more than any host's uplink.
const MaxBandwidthMbps = 400_000

// LabelBandwidth records the bandwidth limits a rental was created with,
// "egress=50,ingress=100" in Mbit/s (a direction left out is unlimited),
// so that a restarted agent can check and re-apply them.
const LabelBandwidth = LabelPrefix + "bandwidth"

// Bandwidth is a rental's traffic limits in Mbit/s; zero is unlimited.
type Bandwidth struct {
	EgressMbps  int64
	IngressMbps int64
}

// IsZero says that neither direction is limited.
func (b Bandwidth) IsZero() bool { return b.EgressMbps <= 0 && b.IngressMbps <= 0 }

// BandwidthOf returns the limits the back end enforces for spec.
func BandwidthOf(spec InstanceSpec) Bandwidth {
	r := spec.Enforced()
	return Bandwidth{EgressMbps: max(r.EgressMbps, 0), IngressMbps: max(r.IngressMbps, 0)}
}

// String formats b as LabelBandwidth's value; "" when unlimited.
func (b Bandwidth) String() string {
	var parts []string
	if b.EgressMbps > 0 {
		parts = append(parts, "egress="+strconv.FormatInt(b.EgressMbps, 10))
	}
	if b.IngressMbps > 0 {
		parts = append(parts, "ingress="+strconv.FormatInt(b.IngressMbps, 10))
	}
	return strings.Join(parts, ",")
}

// ParseBandwidth reads what String wrote.
func ParseBandwidth(s string) (Bandwidth, error) {
	var b Bandwidth
	for _, f := range strings.Split(s, ",") {
		if f == "" {
			continue
		}
		k, v, ok := strings.Cut(f, "=")
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil || n < 0 || n > MaxBandwidthMbps {
			return Bandwidth{}, fmt.Errorf("bandwidth %q: want egress=MBPS,ingress=MBPS", s)
		}
		switch k {
		case "egress":
			b.EgressMbps = n
		case "ingress":
			b.IngressMbps = n
		default:
			return Bandwidth{}, fmt.Errorf("bandwidth %q: unknown direction %q", s, k)
		}
	}
	return b, nil
}

// BandwidthFromLabels reads LabelBandwidth; a label that does not parse
// (written by someone else) reads as unlimited with the error.
func BandwidthFromLabels(labels map[string]string) (Bandwidth, error) {
	return ParseBandwidth(labels[LabelBandwidth])
}
