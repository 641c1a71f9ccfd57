package main

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/host-agent/host-agent/runtime"
)

func TestBandwidthConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env     map[string]string
		want    runtime.Bandwidth
		wantVar string
	}{
		{env: nil},
		{env: map[string]string{"RENTAL_EGRESS_MBPS": "100", "RENTAL_INGRESS_MBPS": "250"}, want: runtime.Bandwidth{EgressMbps: 100, IngressMbps: 250}},
		{env: map[string]string{"RENTAL_EGRESS_MBPS": "0"}},
		{env: map[string]string{"RENTAL_EGRESS_MBPS": "-1"}, wantVar: "RENTAL_EGRESS_MBPS"},
		{env: map[string]string{"RENTAL_EGRESS_MBPS": "1.5"}, wantVar: "RENTAL_EGRESS_MBPS"},
		{env: map[string]string{"RENTAL_INGRESS_MBPS": "fast"}, wantVar: "RENTAL_INGRESS_MBPS"},
		{env: map[string]string{"RENTAL_INGRESS_MBPS": "400001"}, wantVar: "RENTAL_INGRESS_MBPS"},
	} {
		env := map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken}
		for k, v := range tc.env {
			env[k] = v
		}
		c, err := loadConfig(envOf(env), filepath.Join(t.TempDir(), "no.env"))
		if tc.wantVar != "" {
			var ce *configError
			if !errors.As(err, &ce) || ce.Var != tc.wantVar {
				t.Errorf("%v: err = %v, want one naming %s", tc.env, err, tc.wantVar)
			}
			continue
		}
		if err != nil || c.Bandwidth != tc.want {
			t.Errorf("%v: bandwidth %+v, %v; want %+v", tc.env, c.Bandwidth, err, tc.want)
		}
	}
}
