package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/runtime"
)

// logChunk is how much of the log file is read per step from its end.
const logChunk = 64 << 10

// Logs implements runtime.Runtime: the last tail lines of the file the shim
// writes the task's stdout and stderr to, at most runtime.MaxLogBytes of
// them; truncated says the answer was cut to that.
func (r *Runtime) Logs(ctx context.Context, id string, tail int) ([]byte, bool, error) {
	if _, err := r.Get(ctx, id); err != nil {
		return nil, false, err
	}
	f, err := os.Open(r.logPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return []byte{}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("open log of %q: %w", id, err)
	}
	defer f.Close()
	return readTailMax(f, tail, runtime.MaxLogBytes)
}

// readTail is readTailMax with the usual byte cap, for callers that need
// not know whether it cut.
func readTail(f io.ReadSeeker, n int) ([]byte, error) {
	b, _, err := readTailMax(f, n, runtime.MaxLogBytes)
	return b, err
}

// readTailMax is tailLinesMax on a log that may be cut from the front
// (capLogs) while it is read, which ends a read early: it reads again from
// the new end.
func readTailMax(f io.ReadSeeker, n, maxBytes int) ([]byte, bool, error) {
	for attempt := 0; ; attempt++ {
		b, cut, err := tailLinesMax(f, n, maxBytes)
		if (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && attempt < 5 {
			continue
		}
		return b, cut, err
	}
}

// tailLines is tailLinesMax with the usual byte cap.
func tailLines(f io.ReadSeeker, n int) ([]byte, error) {
	b, _, err := tailLinesMax(f, n, runtime.MaxLogBytes)
	return b, err
}

// tailLinesMax returns the last n lines of f, but at most maxBytes of them
// (then starting at a line boundary when one is in reach, and reporting the
// cut). It reads backwards in chunks, each read once and counted once, so a
// request costs what it returns, however large the log and however few its
// newlines. The hole a punched log cap leaves at the front of the file is
// skipped, not read as zeros.
func tailLinesMax(f io.ReadSeeker, n, maxBytes int) ([]byte, bool, error) {
	if n <= 0 {
		return nil, false, fmt.Errorf("tail must be positive: %w", errdefs.ErrInvalidArgument)
	}
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, false, err
	}
	start := int64(0)
	if file, ok := f.(*os.File); ok && end > 0 {
		switch off, err := file.Seek(0, unix.SEEK_DATA); {
		case err == nil:
			start = off
		case errors.Is(err, unix.ENXIO):
			return []byte{}, false, nil // all hole
		}
	}
	var chunks [][]byte
	total, newlines := 0, 0
	pos := end
	for pos > start && newlines < n && total <= maxBytes {
		step := min(int64(logChunk), pos-start)
		pos -= step
		chunk := make([]byte, step)
		if _, err := f.Seek(pos, io.SeekStart); err != nil {
			return nil, false, err
		}
		if _, err := io.ReadFull(f, chunk); err != nil {
			return nil, false, err
		}
		counted := chunk
		if pos+step == end {
			// A trailing newline ends the last line rather than starting one.
			counted = bytes.TrimSuffix(chunk, []byte("\n"))
		}
		newlines += bytes.Count(counted, []byte("\n"))
		chunks = append(chunks, chunk)
		total += len(chunk)
	}
	slices.Reverse(chunks)
	buf := bytes.Join(chunks, nil)
	if pos <= start {
		// The front of the file: a partly punched block reads as zeros.
		buf = bytes.TrimLeft(buf, "\x00")
	}
	trimmed := bytes.TrimSuffix(buf, []byte("\n"))
	for i := len(trimmed) - 1; i >= 0; i-- {
		if trimmed[i] == '\n' {
			n--
			if n == 0 {
				buf = buf[i+1:]
				break
			}
		}
	}
	if len(buf) <= maxBytes {
		return buf, false, nil
	}
	buf = buf[len(buf)-maxBytes:]
	if i := bytes.IndexByte(buf, '\n'); i >= 0 && i < len(buf)-1 {
		buf = buf[i+1:]
	}
	return buf, true, nil
}
