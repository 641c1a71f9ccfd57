package containerd

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/runtime"
)

func TestTailLines(t *testing.T) {
	t.Parallel()
	var long strings.Builder
	for i := 1; i <= 20000; i++ {
		fmt.Fprintf(&long, "line %d\n", i)
	}
	for _, tc := range []struct {
		name, in string
		n        int
		want     string
	}{
		{"empty", "", 5, ""},
		{"fewer lines than asked", "a\nb\n", 5, "a\nb\n"},
		{"last two", "a\nb\nc\n", 2, "b\nc\n"},
		{"no trailing newline", "a\nb\nc", 2, "b\nc"},
		{"one", "a\nb\nc\n", 1, "c\n"},
		{"across chunks", long.String(), 3, "line 19998\nline 19999\nline 20000\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := tailLines(bytes.NewReader([]byte(tc.in)), tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("tail %d of %q = %q, want %q", tc.n, tc.in, got, tc.want)
			}
		})
	}
	if _, err := tailLines(bytes.NewReader(nil), 0); err == nil {
		t.Fatal("tail 0 accepted")
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	io.ReadSeeker
	read int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.ReadSeeker.Read(p)
	c.read += int64(n)
	return n, err
}

// Defect 8: a tail of a log with few newlines reads and returns at most the
// byte cap (plus one chunk), and says it cut; before, ?tail=1 on such a log
// read and copied all of it, over and over.
func TestDefect8LogTailBoundedInBytes(t *testing.T) {
	t.Parallel()
	const size = 8 << 20
	data := bytes.Repeat([]byte("x"), size)
	data[size/2] = '\n'
	r := &countingReader{ReadSeeker: bytes.NewReader(data)}
	got, cut, err := tailLinesMax(r, 1, runtime.MaxLogBytes)
	if err != nil {
		t.Fatal(err)
	}
	if !cut || len(got) != runtime.MaxLogBytes {
		t.Fatalf("tail 1 of an 8 MiB line: %d bytes, truncated %v; want %d, true", len(got), cut, runtime.MaxLogBytes)
	}
	if r.read > runtime.MaxLogBytes+logChunk {
		t.Fatalf("read %d bytes for a %d-byte answer", r.read, len(got))
	}
	// A cut answer starts at a line boundary when one is in reach.
	lines := bytes.Repeat([]byte(strings.Repeat("y", 99)+"\n"), 30000)
	got, cut, err = tailLinesMax(bytes.NewReader(lines), 20000, runtime.MaxLogBytes)
	if err != nil || !cut || len(got) > runtime.MaxLogBytes || got[0] != 'y' || len(got)%100 != 0 {
		t.Fatalf("tail of 20000 100-byte lines: %d bytes, truncated %v, %v", len(got), cut, err)
	}
	got, cut, err = tailLinesMax(bytes.NewReader(lines), 10, runtime.MaxLogBytes)
	if err != nil || cut || len(got) != 1000 {
		t.Fatalf("tail of 10 lines: %d bytes, truncated %v, %v", len(got), cut, err)
	}
}

// Defect 8: the hole a punched log cap leaves at the front is skipped, not
// returned as NUL bytes.
func TestDefect8LogTailSkipsHoles(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "holey.log")
	line := strings.Repeat("z", 63) + "\n"
	if err := os.WriteFile(path, []byte(strings.Repeat(line, 4096)), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 128<<10); err != nil {
		t.Skipf("cannot punch holes here: %v", err)
	}
	got, err := readTail(f, 100000)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.IndexByte(got, 0) >= 0 {
		t.Fatalf("the tail holds %d NUL bytes from the hole", bytes.Count(got, []byte{0}))
	}
	if want := 4096*64 - 128<<10; len(got) != want {
		t.Fatalf("got %d bytes, want the %d after the hole", len(got), want)
	}
}
