package docker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
)

// Logs implements runtime.Runtime: the last tail lines of the container's
// stdout and stderr as the daemon's log driver kept them (rotated at
// Options.LogMaxBytes on disk), at most runtime.MaxLogBytes of them.
func (r *Runtime) Logs(ctx context.Context, id string, tail int) ([]byte, bool, error) {
	if tail <= 0 {
		return nil, false, fmt.Errorf("tail must be positive: %w", errdefs.ErrInvalidArgument)
	}
	c, err := r.inspect(ctx, id)
	if err != nil {
		return nil, false, err
	}
	rc, err := r.client.ContainerLogs(ctx, c.ID, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(tail)})
	if err != nil {
		return nil, false, fmt.Errorf("logs of %q: %w", id, convertErr(err))
	}
	defer rc.Close()
	w := &tailWriter{max: 2 * runtime.MaxLogBytes}
	if c.Config != nil && c.Config.Tty {
		_, err = io.Copy(w, rc)
	} else {
		_, err = stdcopy.StdCopy(w, w, rc)
	}
	if err != nil {
		return nil, false, fmt.Errorf("read logs of %q: %w", id, convertErr(err))
	}
	buf := w.buf.Bytes()
	cut := w.dropped
	if len(buf) > runtime.MaxLogBytes {
		buf, cut = buf[len(buf)-runtime.MaxLogBytes:], true
	}
	if cut {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 && i < len(buf)-1 {
			buf = buf[i+1:]
		}
	}
	return append([]byte{}, buf...), cut, nil
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	buf     bytes.Buffer
	max     int
	dropped bool
}

func (w *tailWriter) Write(p []byte) (int, error) {
	n, _ := w.buf.Write(p)
	if over := w.buf.Len() - w.max; over > 0 {
		w.buf.Next(over)
		w.dropped = true
	}
	return n, nil
}
