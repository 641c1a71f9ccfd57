package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// Polling of a followed log: new output is looked for every
// followPollInterval, and whether the instance still runs every
// followStateInterval without new output.
const (
	followPollInterval  = 200 * time.Millisecond
	followStateInterval = time.Second
)

var _ runtime.LogFollower = (*Runtime)(nil)

// LogOffset implements runtime.LogFollower: the size of the log file, whose
// offsets stay valid when the log cap punches out its front.
func (r *Runtime) LogOffset(ctx context.Context, id string) (int64, error) {
	if _, err := r.Get(ctx, id); err != nil {
		return 0, err
	}
	fi, err := os.Stat(r.logPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("log of %q: %w", id, err)
	}
	return fi.Size(), nil
}

// FollowLogs implements runtime.LogFollower on the file the shim writes.
func (r *Runtime) FollowLogs(ctx context.Context, id string, from int64, tail int, maxBytes int64, w io.Writer, flush func()) (int64, bool, error) {
	if _, err := r.Get(ctx, id); err != nil {
		return 0, false, err
	}
	if maxBytes <= 0 {
		maxBytes = runtime.MaxFollowBytes
	}
	f, err := os.Open(r.logPath(id))
	for errors.Is(err, os.ErrNotExist) {
		// The shim creates it with the task; wait for it while the
		// instance exists.
		select {
		case <-ctx.Done():
			return 0, false, nil
		case <-time.After(followPollInterval):
		}
		if _, err := r.Get(ctx, id); err != nil {
			return 0, false, err
		}
		f, err = os.Open(r.logPath(id))
	}
	if err != nil {
		return 0, false, fmt.Errorf("open log of %q: %w", id, err)
	}
	defer f.Close()

	pos := from
	var sent int64
	if pos < 0 {
		end, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			return 0, false, err
		}
		b, _, err := readTailMax(io.NewSectionReader(f, 0, end), max(tail, 1), int(min(maxBytes, runtime.MaxLogBytes)))
		if err != nil {
			return 0, false, err
		}
		if tail > 0 && len(b) > 0 {
			if _, err := w.Write(b); err != nil {
				return end, false, nil
			}
			flush()
			sent += int64(len(b))
		}
		pos = end
	}
	buf := make([]byte, logChunk)
	lastState := time.Now()
	exited := false
	for {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), maxBytes-sent)], pos)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return pos, false, nil // the client left
			}
			flush()
			pos += int64(n)
			sent += int64(n)
			if sent >= maxBytes {
				return pos, true, nil
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return pos, false, fmt.Errorf("read log of %q: %w", id, err)
		}
		if exited {
			// Everything written before the exit was seen is sent.
			return pos, false, nil
		}
		if time.Since(lastState) >= followStateInterval {
			lastState = time.Now()
			inst, err := r.Get(ctx, id)
			switch {
			case errdefs.IsNotFound(err):
				return pos, false, nil
			case err != nil && ctx.Err() == nil:
				return pos, false, err
			case err == nil && inst.Status == runtime.StatusExited:
				exited = true
				continue
			}
		}
		select {
		case <-ctx.Done():
			return pos, false, nil
		case <-time.After(followPollInterval):
		}
	}
}
