package containerd

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestConvertErrKinds(t *testing.T) {
	shimTimeout := status.Error(codes.Unknown, "failed to delete task: failed to invoke shutdown: context deadline exceeded")
	for _, tc := range []struct {
		name string
		err  error
		is   func(error) bool
	}{
		{"shim timeout over gRPC", shimTimeout, func(err error) bool {
			return errdefs.Resolve(err) == context.DeadlineExceeded && err.Error() == "failed to delete task: failed to invoke shutdown: context deadline exceeded"
		}},
		{"shim timeout wrapped by the client", fmt.Errorf("delete: %w", errdefs.ErrUnknown.WithMessage("failed to invoke shutdown: context deadline exceeded")),
			func(err error) bool { return errdefs.Resolve(err) == context.DeadlineExceeded }},
		{"unavailable", status.Error(codes.Unavailable, "connection refused"), errdefs.IsUnavailable},
		{"not found keeps its kind", status.Error(codes.NotFound, "task x: context deadline exceeded"), func(err error) bool {
			return errdefs.IsNotFound(err) && !errors.Is(err, context.DeadlineExceeded)
		}},
		{"unknown stays unknown", status.Error(codes.Unknown, "shim exploded"), func(err error) bool {
			return !errors.Is(err, context.DeadlineExceeded)
		}},
		{"runc refusing a limit is a failed precondition naming it", status.Error(codes.Unknown,
			"failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error setting rlimit type 7: operation not permitted"),
			func(err error) bool {
				var fe interface{ ErrorField() string }
				return errdefs.IsFailedPrecondition(err) && errors.As(err, &fe) && fe.ErrorField() == "ulimits.nofile"
			}},
	} {
		if got := convertErr(tc.err); !tc.is(got) {
			t.Errorf("%s: convertErr = %v (%T)", tc.name, got, errdefs.Resolve(got))
		}
	}
}
