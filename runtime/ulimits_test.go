package runtime

import "testing"

func TestCanRaiseRlimits(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status    string
		container bool
		want      bool
	}{
		{"Name:\thost-agent\nCapEff:\t000001ffffffffff\n", false, true},
		{"Name:\thost-agent\nCapEff:\t000001fffeffffff\n", false, false}, // no CAP_SYS_RESOURCE (bit 24)
		{"Name:\thost-agent\nCapEff:\t0000000000003000\n", true, true},   // the README's container: NET_ADMIN, NET_RAW
		{"", false, false},
	} {
		if got := canRaiseRlimits(tc.status, tc.container); got != tc.want {
			t.Errorf("canRaiseRlimits(%q, in container %v) = %v, want %v", tc.status, tc.container, got, tc.want)
		}
	}
}
