package runtime

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// The probe's answer is kept; a failed probe answers no and is asked again.
func TestValidateUlimitRealTimePriority(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		v    int64
		ok   bool
	}{
		{"rtprio", 0, true},
		{"rtprio", 1, false},
		{"rtprio", 99, false},
		{"rtprio", UlimitUnlimited, false},
		{"nice", 40, true},
		{"nice", UlimitUnlimited, true},
		{"rttime", 1000, true},
		{"rttime", UlimitUnlimited, true},
	} {
		if err := ValidateUlimit(tt.name, tt.v); (err == nil) != tt.ok {
			t.Errorf("ValidateUlimit(%s, %d) = %v, want ok %v", tt.name, tt.v, err, tt.ok)
		}
	}
}

// A limit above the agent's own hard limit is refused, naming it and the
// ceiling, where the runtime cannot raise limits; the runtime is asked
// only about such a limit, and an unknown answer lets the start go on.
func TestCheckUlimitsGrantable(t *testing.T) {
	t.Parallel()
	hard, ok := UlimitCeiling("nofile")
	if !ok {
		t.Fatal("no nofile ceiling on Linux")
	}
	if hard == RlimitInfinity {
		t.Skip("this process's hard nofile is unlimited: no limit can be above it")
	}
	asked := 0
	answer := func(can, known bool) func() (bool, bool) {
		return func() (bool, bool) { asked++; return can, known }
	}
	if err := CheckUlimitsGrantable(map[string]int64{"nofile": int64(hard), "core": 0}, answer(false, true)); err != nil || asked != 0 {
		t.Fatalf("limits within the ceiling: %v, runtime asked %d times", err, asked)
	}
	err := CheckUlimitsGrantable(map[string]int64{"core": 0, "nofile": int64(hard) + 1}, answer(false, true))
	var ue *UlimitError
	if !errors.As(err, &ue) || ue.Name != "nofile" || ue.Ceiling != hard || ue.ErrorField() != "ulimits.nofile" || !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("nofile above the ceiling of %d: %v", hard, err)
	}
	if !strings.Contains(err.Error(), strconv.FormatUint(hard, 10)) {
		t.Errorf("the refusal does not name the ceiling: %v", err)
	}
	if err := CheckUlimitsGrantable(map[string]int64{"nofile": UlimitUnlimited}, answer(false, true)); !errors.As(err, &ue) || ue.Name != "nofile" {
		t.Errorf("unlimited nofile: %v", err)
	}
	if err := CheckUlimitsGrantable(map[string]int64{"nofile": int64(hard) + 1}, answer(true, true)); err != nil {
		t.Errorf("a runtime that can raise: %v", err)
	}
	if err := CheckUlimitsGrantable(map[string]int64{"nofile": int64(hard) + 1}, answer(false, false)); err != nil {
		t.Errorf("a runtime whose answer is unknown: %v", err)
	}
}

// runc's refusal of a limit is a FailedPrecondition naming it.
func TestRlimitRefused(t *testing.T) {
	t.Parallel()
	runc := fmt.Errorf("failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error setting rlimit type 7: operation not permitted: %w", errdefs.ErrUnknown)
	err := RlimitRefused(runc)
	var ue *UlimitError
	if !errors.As(err, &ue) || ue.ErrorField() != "ulimits.nofile" || !errdefs.IsFailedPrecondition(err) || !errors.Is(err, runc) {
		t.Fatalf("RlimitRefused(%v) = %v", runc, err)
	}
	if again := RlimitRefused(fmt.Errorf("start: %w", err)); !errors.As(again, &ue) || ue.Cause != runc {
		t.Errorf("converted twice: %v", again)
	}
	other := errors.New("exec: not found")
	if err := RlimitRefused(other); err != other {
		t.Errorf("another error changed: %v", err)
	}
}
