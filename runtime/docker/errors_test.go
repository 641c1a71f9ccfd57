package docker

import (
	"errors"
	"testing"

	"github.com/containerd/errdefs"
)

// runc refusing a limit, as the daemon passes it on, is a failed
// precondition naming the limit, not an internal error.
func TestConvertErrRlimitRefused(t *testing.T) {
	t.Parallel()
	daemon := errdefs.ErrUnknown.WithMessage("failed to create task for container: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error setting rlimit type 8: operation not permitted: unknown")
	err := convertErr(daemon)
	var fe interface{ ErrorField() string }
	if !errdefs.IsFailedPrecondition(err) || !errors.As(err, &fe) || fe.ErrorField() != "ulimits.memlock" {
		t.Fatalf("convertErr = %v (%T)", err, errdefs.Resolve(err))
	}
}
