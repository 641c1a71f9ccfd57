package backend

import (
	"strings"
	"testing"
)

func TestConfinementPolicy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		dir string
		ok  bool
	}{
		{"", true}, {"/", true}, {"/workspace", true}, {"/procfs", true},
		{"/proc", false}, {"/proc/self/fd/7", false}, {"//proc/1/cwd", false}, {"/tmp/../proc/self/fd/8", false}, {"work", false},
	} {
		if got := WorkingDirProblem(tc.dir) == ""; got != tc.ok {
			t.Errorf("working dir %q allowed = %v, want %v", tc.dir, got, tc.ok)
		}
	}
	if p := CapabilityProblem("effective", RentalCapabilities); p != "" {
		t.Errorf("the rental's own capabilities: %s", p)
	}
	if p := CapabilityProblem("ambient", []string{"NET_RAW", "CAP_KILL"}); !strings.Contains(p, "CAP_NET_RAW") || !strings.Contains(p, "ambient") {
		t.Errorf("NET_RAW in the ambient set: %q", p)
	}
	if p := SysctlProblem(RentalSysctls()); p != "" {
		t.Errorf("the rental's own sysctls: %s", p)
	}
	if p := SysctlProblem(map[string]string{"kernel.sem": "1"}); !strings.Contains(p, "kernel.sem") {
		t.Errorf("another sysctl: %q", p)
	}
}
