package containerd

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/status"

	"github.com/host-agent/host-agent/runtime"
)

// convertErr turns a raw gRPC error from containerd, a lost connection
// included, into an errdefs kind (Unavailable for a daemon that does not
// answer), so that callers above the runtime classify errors without knowing
// containerd. Errors that are not gRPC statuses (the client's own, which
// already carry kinds) pass through with their chain intact, unless they
// are of no kind and say that containerd timed out (timedOut).
func convertErr(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		err = errgrpc.ToNative(err)
	}
	// runc refusing a limit it cannot raise (no CAP_SYS_RESOURCE): the
	// host cannot run the request, a 409 naming the limit, not an
	// internal error.
	return runtime.RlimitRefused(timedOut(err))
}

// timedOut gives an error of unknown kind that ends in a timeout the kind
// DeadlineExceeded: containerd answers a call to a shim that did not answer
// in time (an overloaded host) with code Unknown and the message
// "failed to ...: context deadline exceeded". Sent again, such a call
// usually succeeds.
func timedOut(err error) error {
	kind := errdefs.Resolve(err)
	if (kind == nil || errdefs.IsUnknown(kind)) && strings.HasSuffix(err.Error(), context.DeadlineExceeded.Error()) {
		// The message stays; the kind of no kind goes, so that the
		// timeout is what errdefs.Resolve finds.
		return fmt.Errorf("%s: %w", strings.TrimSuffix(strings.TrimSuffix(err.Error(), context.DeadlineExceeded.Error()), ": "), context.DeadlineExceeded)
	}
	return err
}
