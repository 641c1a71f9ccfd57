package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
)

var _ runtime.LogFollower = (*Runtime)(nil)

// On Docker a position in an instance's log is a time: nanoseconds since
// the epoch, every line the daemon stamped at or after it being still to
// come. The daemon's json-file driver keeps no byte offsets, and rotation
// would move them anyway.

// LogOffset implements runtime.LogFollower: now.
func (r *Runtime) LogOffset(ctx context.Context, id string) (int64, error) {
	if _, err := r.inspect(ctx, id); err != nil {
		return 0, err
	}
	return time.Now().UnixNano(), nil
}

// errFollowCap stops the copy of a followed log at its byte cap.
var errFollowCap = errors.New("follow cap reached")

// FollowLogs implements runtime.LogFollower with the daemon's own follow,
// which ends when the container stops. The lines come stamped, and each
// sent moves the position past its stamp; at the cap it stops before a line
// that would not fit whole (a first line longer than the cap is cut, and
// its rest skipped).
func (r *Runtime) FollowLogs(ctx context.Context, id string, from int64, tail int, maxBytes int64, w io.Writer, flush func()) (int64, bool, error) {
	c, err := r.inspect(ctx, id)
	if err != nil {
		return 0, false, err
	}
	if maxBytes <= 0 {
		maxBytes = runtime.MaxFollowBytes
	}
	opts := client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true, Timestamps: true}
	fw := &followWriter{w: w, flush: flush, max: maxBytes, next: from}
	switch {
	case from < 0:
		fw.next = time.Now().UnixNano()
		opts.Tail = strconv.Itoa(max(tail, 0))
	case from > 0:
		opts.Since = fmt.Sprintf("%d.%09d", from/1e9, from%1e9)
	}
	rc, err := r.client.ContainerLogs(ctx, c.ID, opts)
	if err != nil {
		if ctx.Err() != nil {
			return fw.next, false, nil
		}
		return fw.next, false, fmt.Errorf("follow logs of %q: %w", id, convertErr(err))
	}
	defer rc.Close()
	if c.Config != nil && c.Config.Tty {
		_, err = io.Copy(fw, rc)
	} else {
		_, err = stdcopy.StdCopy(fw, fw, rc)
	}
	switch {
	case errors.Is(err, errFollowCap):
		return fw.next, true, nil
	case fw.clientGone, ctx.Err() != nil:
		return fw.next, false, nil
	case err != nil:
		return fw.next, false, fmt.Errorf("follow logs of %q: %w", id, convertErr(err))
	}
	return fw.next, false, nil
}

// followWriter receives the daemon's log messages, one a Write, each
// "<RFC 3339 stamp> <message>", and passes the messages on.
type followWriter struct {
	w          io.Writer
	flush      func()
	max, sent  int64
	next       int64
	clientGone bool
}

func (f *followWriter) Write(p []byte) (int, error) {
	stamp, msg, ok := bytes.Cut(p, []byte(" "))
	t, err := time.Parse(time.RFC3339Nano, string(stamp))
	if !ok || err != nil {
		return 0, fmt.Errorf("log message without a time stamp: %.40q", p)
	}
	if f.sent+int64(len(msg)) > f.max {
		if f.sent > 0 {
			return 0, errFollowCap
		}
		msg = msg[:f.max]
	}
	if _, err := f.w.Write(msg); err != nil {
		f.clientGone = true
		return 0, err
	}
	f.flush()
	f.sent += int64(len(msg))
	f.next = t.UnixNano() + 1
	if f.sent >= f.max {
		return len(p), errFollowCap
	}
	return len(p), nil
}
