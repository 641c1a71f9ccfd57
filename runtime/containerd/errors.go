package containerd

import (
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/status"
)

// convertErr turns a raw gRPC error from containerd, a lost connection
// included, into an errdefs kind (Unavailable for a daemon that does not
// answer), so that callers above the runtime classify errors without knowing
// containerd. Errors that are not gRPC statuses (the client's own, which
// already carry kinds) pass through with their chain intact.
func convertErr(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); !ok {
		return err
	}
	return errgrpc.ToNative(err)
}
