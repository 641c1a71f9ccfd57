package main

import (
	"fmt"
	"strconv"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// loadBandwidthConfig reads the bandwidth limits of a rental that names
// none (RENTAL_EGRESS_MBPS, RENTAL_INGRESS_MBPS, in Mbit/s); unset or 0:
// unlimited.
func loadBandwidthConfig(get func(name, def string) string) (runtime.Bandwidth, error) {
	var b runtime.Bandwidth
	for _, v := range []struct {
		name string
		to   *int64
	}{{"RENTAL_EGRESS_MBPS", &b.EgressMbps}, {"RENTAL_INGRESS_MBPS", &b.IngressMbps}} {
		n, err := strconv.ParseInt(get(v.name, "0"), 10, 64)
		if err != nil || n < 0 || n > runtime.MaxBandwidthMbps {
			return runtime.Bandwidth{}, &configError{v.name, fmt.Sprintf("want a whole number of Mbit/s between 0 (unlimited) and %d", runtime.MaxBandwidthMbps)}
		}
		*v.to = n
	}
	return b, nil
}

// bandwidthDefaults gives a rental naming no limits the host's; listed
// last, after the kinds that fill in the other limits.
func bandwidthDefaults(cfg config) runtime.Admission {
	return lifecycle.BandwidthDefaults{Bandwidth: cfg.Bandwidth}
}
