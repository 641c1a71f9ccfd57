package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/containerd/errdefs"
)

// logChunk is how much of the log file is read per step from its end.
const logChunk = 64 << 10

// Logs implements runtime.Runtime: the last tail lines of the file the shim
// writes the task's stdout and stderr to.
func (r *Runtime) Logs(ctx context.Context, id string, tail int) ([]byte, error) {
	if _, err := r.Get(ctx, id); err != nil {
		return nil, err
	}
	f, err := os.Open(r.logPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return []byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open log of %q: %w", id, err)
	}
	defer f.Close()
	return readTail(f, tail)
}

// readTail is tailLines on a log that may be cut from the front (capLogs)
// while it is read, which ends a read early: it reads again from the new
// end.
func readTail(f io.ReadSeeker, n int) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		b, err := tailLines(f, n)
		if (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && attempt < 5 {
			continue
		}
		return b, err
	}
}

// tailLines returns the last n lines of f, reading backwards in chunks so
// that a large log costs only what is returned.
func tailLines(f io.ReadSeeker, n int) ([]byte, error) {
	if n <= 0 {
		return nil, fmt.Errorf("tail must be positive: %w", errdefs.ErrInvalidArgument)
	}
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	var buf []byte
	pos := end
	for pos > 0 {
		step := min(int64(logChunk), pos)
		pos -= step
		chunk := make([]byte, step)
		if _, err := f.Seek(pos, io.SeekStart); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(f, chunk); err != nil {
			return nil, err
		}
		buf = append(chunk, buf...)
		// A trailing newline ends the last line rather than starting one.
		if bytes.Count(bytes.TrimSuffix(buf, []byte("\n")), []byte("\n")) >= n {
			break
		}
	}
	trimmed := bytes.TrimSuffix(buf, []byte("\n"))
	for i := len(trimmed) - 1; i >= 0; i-- {
		if trimmed[i] == '\n' {
			n--
			if n == 0 {
				return buf[i+1:], nil
			}
		}
	}
	return buf, nil
}
