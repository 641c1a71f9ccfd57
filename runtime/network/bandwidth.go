package network

import (
	gocni "github.com/containerd/go-cni"
)

// Bandwidth is a rental's traffic limits in Mbit/s, zero unlimited:
// EgressMbps what it sends, IngressMbps what it receives.
type Bandwidth struct {
	EgressMbps  int64
	IngressMbps int64
}

// IsZero says that neither direction is limited.
func (b Bandwidth) IsZero() bool { return b.EgressMbps <= 0 && b.IngressMbps <= 0 }

// BurstBits is the token bucket's depth for a limit of rate bit/s: a tenth
// of a second of traffic, and at least 64 KiB, so that TCP keeps its pace
// (a bucket smaller than a timer tick's worth of bytes holds a sender
// below its limit) while the average over seconds stays within a few
// percent of the limit.
func BurstBits(rateBits uint64) uint64 { return max(rateBits/10, 64<<10*8) }

// cniBandwidth is the bandwidth plugin's runtime configuration for b. The
// plugin's ingress is the traffic into the container (a token bucket on
// the host's end of the veth), its egress what the container sends (a
// token bucket on an ifb device fed from that end's ingress).
func (b Bandwidth) cniBandwidth() gocni.BandWidth {
	var out gocni.BandWidth
	if b.IngressMbps > 0 {
		out.IngressRate = uint64(b.IngressMbps) * 1_000_000
		out.IngressBurst = BurstBits(out.IngressRate)
	}
	if b.EgressMbps > 0 {
		out.EgressRate = uint64(b.EgressMbps) * 1_000_000
		out.EgressBurst = BurstBits(out.EgressRate)
	}
	return out
}

// SetupOption changes what Setup does.
type SetupOption func(*setupOptions)

type setupOptions struct {
	bandwidth Bandwidth
}

// WithBandwidth limits the instance's traffic through the CNI bandwidth
// plugin, chained after portmap.
func WithBandwidth(b Bandwidth) SetupOption {
	return func(o *setupOptions) { o.bandwidth = b }
}
