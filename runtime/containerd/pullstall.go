package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// DefaultPullStallTimeout is how long a pull may go without a byte of
// progress before it fails as stalled.
const DefaultPullStallTimeout = 5 * time.Minute

// errPullStalled is the cause a stalled pull is cancelled with.
var errPullStalled = errors.New("pull stalled")

// watchStall cancels ctx (with errPullStalled as its cause) once the pull
// has received no byte from the registry for r.opts.PullStallTimeout. There is
// no bound on a pull that keeps going: a 30 GB image on a slow link is fine.
// The returned function stops the watch.
func (r *Runtime) watchStall(ctx context.Context, cancel context.CancelCauseFunc, received *atomic.Int64) (stop func()) {
	timeout := r.opts.PullStallTimeout
	check := min(max(timeout/10, 50*time.Millisecond), 5*time.Second)
	done := make(chan struct{})
	quit := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(check)
		defer tick.Stop()
		var last int64 = -1
		lastMove := time.Now()
		for {
			select {
			case <-quit:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if moved := received.Load(); moved != last {
				last, lastMove = moved, time.Now()
				continue
			}
			if time.Since(lastMove) >= timeout {
				cancel(fmt.Errorf("%w: no progress for %s", errPullStalled, timeout))
				return
			}
		}
	}()
	return func() { close(quit); <-done }
}

// pullError names the kind of a failed pull for the caller: not found,
// unauthorized, disk full, stalled; other failures keep their cause's kind.
func pullError(ctx context.Context, ref string, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, errPullStalled) {
		return &runtime.PullError{Kind: runtime.PullStalled,
			Err: fmt.Errorf("pull %s: %w: %w", ref, cause, errdefs.ErrAborted)}
	}
	err = classifyPullErr(convertErr(err))
	kind := ""
	switch {
	// The content store writes in containerd, whose ENOSPC comes back
	// over gRPC as text.
	case errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), syscall.ENOSPC.Error()):
		kind = runtime.PullDiskFull
		err = fmt.Errorf("no space left on the host's disk: %w: %w", errdefs.ErrResourceExhausted, err)
	case errdefs.IsNotFound(err):
		kind = runtime.PullNotFound
	case errdefs.IsUnauthorized(err), errdefs.IsPermissionDenied(err):
		kind = runtime.PullUnauthorized
	}
	err = fmt.Errorf("pull %s: %w", ref, err)
	if kind == "" {
		return err
	}
	return &runtime.PullError{Kind: kind, Err: err}
}

// countingTransport adds the bytes of every response body it carries to n.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(req)
	if err == nil && resp.Body != nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	k, err := b.ReadCloser.Read(p)
	b.n.Add(int64(k))
	return k, err
}
