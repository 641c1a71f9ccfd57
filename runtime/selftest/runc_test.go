package selftest

import "testing"

func TestRuncBeforeFix(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ line, want string }{
		{"runc version 1.1.5+ds1", "1.1.5+ds1"}, // Debian 12: warned, not failed (the fix is backported)
		{"runc version 1.1.11", "1.1.11"},
		{"runc version 1.0.0-rc93", "1.0.0-rc93"},
		{"runc version 1.1.12", ""},
		{"runc version 1.2.0", ""},
		{"runc version 2.0.1", ""},
		{"runc version 1.1.13-0ubuntu1", ""},
		{"not runc", ""},
		{"runc version unknown", ""},
	} {
		if got := runcBeforeFix(tc.line); got != tc.want {
			t.Errorf("runcBeforeFix(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
}
