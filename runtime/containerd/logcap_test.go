package containerd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCapLogKeepsTheNewestOutputWhileAppending(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "i.log")
	const max = 256 << 10
	// The shim appends with O_APPEND; so does this writer, during the cuts.
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const lines = 40000
	written := make(chan struct{})
	go func() {
		defer close(written)
		for i := range lines {
			fmt.Fprintf(w, "line %06d %s\n", i, strings.Repeat("x", 40))
		}
	}()
	cuts := 0
	for done := false; !done; {
		select {
		case <-written:
			done = true
		default:
		}
		n, err := capLog(path, max)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			cuts++
		}
	}
	if _, err := capLog(path, max); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > max+64<<10 || cuts == 0 {
		t.Fatalf("log uses %d bytes on disk after %d cuts, cap %d", used, cuts, max)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tail, err := tailLines(f, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("line %06d", lines-1)
	if !bytes.Contains(tail, []byte(want)) || bytes.Count(tail, []byte("\n")) != 3 {
		t.Fatalf("tail after capping = %q, want the last lines up to %q", tail, want)
	}
	// Nothing written was lost in the part kept: the lines are in order.
	all, _ := os.ReadFile(path)
	kept := strings.Split(strings.TrimSuffix(string(bytes.TrimLeft(all, "\x00")), "\n"), "\n")
	prev := -1
	for _, l := range kept[1:] { // the first may have been cut mid-line
		var n int
		if _, err := fmt.Sscanf(l, "line %06d", &n); err != nil || (prev >= 0 && n != prev+1) {
			t.Fatalf("kept output out of order near %q (previous %d)", l, prev)
		}
		prev = n
	}
}

func TestCapLogLeavesSmallFilesAlone(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "small.log")
	if err := os.WriteFile(path, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := capLog(path, 1<<20); n != 0 || err != nil {
		t.Fatalf("capLog of a small file = %d, %v", n, err)
	}
	if n, err := capLog(filepath.Join(t.TempDir(), "gone.log"), 1); n != 0 || err != nil {
		t.Fatalf("capLog of a missing file = %d, %v", n, err)
	}
}

// Reading the tail while the log is cut from the front still succeeds.
func TestLogsReadableWhileCapped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := &Runtime{opts: Options{LogDir: dir}}
	path := r.logPath("busy")
	line := strings.Repeat("y", 99) + "\n"
	if err := os.WriteFile(path, []byte(strings.Repeat(line, 40000)), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for range 2000 {
				w.WriteString(line)
			}
			if _, err := capLog(path, 1<<20); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range 300 {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := readTail(f, 1000)
		f.Close()
		if err != nil {
			t.Fatalf("tail while capping: %v", err)
		}
		if len(b) == 0 {
			t.Fatal("empty tail")
		}
	}
	close(stop)
	<-done
}
