package cdi

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
)

// countingCache counts the rereads of the spec directories.
type countingCache struct {
	specCache
	refreshes atomic.Int32
}

func (c *countingCache) Refresh() error {
	c.refreshes.Add(1)
	return c.specCache.Refresh()
}

// The spec directories are parsed again only when what they hold changed:
// an injection over unchanged specs reuses the last read, and one after a
// spec was rewritten, replaced, added or removed sees the change. While a
// spec changed within the last two seconds (a second write in the same
// timestamp tick could look the same), every injection reads again.
func TestSpecsRereadOnlyWhenChanged(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	dir := t.TempDir()
	uuids := fakeUUIDs()
	spec := writeSpec(t, dir, "nvidia.json", gpuSpec(uuids))
	in, _, _ := newTestInjector(t, []string{dir})
	counter := &countingCache{specCache: in.cache}
	in.cache = counter
	later := time.Now().Add(time.Hour)
	in.clock = func() time.Time { return later }
	reads := func() int { return int(counter.refreshes.Load()) }
	injects := func(uuid string) error {
		t.Helper()
		_, err := inject(t, in, []string{uuid})
		return err
	}

	for range 3 {
		if err := injects(uuids[0]); err != nil {
			t.Fatal(err)
		}
	}
	if got := reads(); got != 1 {
		t.Fatalf("3 injections over unchanged specs read them %d times, want once (the files were new at the start)", got)
	}

	// Rewritten in place, without the first GPU.
	if err := os.WriteFile(spec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	writeSpec(t, dir, "nvidia.json", gpuSpec(uuids[1:]))
	later = later.Add(time.Hour)
	if err := injects(uuids[0]); err == nil {
		t.Fatalf("a GPU removed from the spec was still injected (reads %d)", reads())
	}
	if err := injects(uuids[1]); err != nil {
		t.Fatal(err)
	}
	if got := reads(); got != 2 {
		t.Fatalf("reads after a rewrite: %d, want 2", got)
	}

	// Replaced by a rename: same name, another inode.
	tmp := writeSpec(t, t.TempDir(), "nvidia.json", gpuSpec(uuids))
	if err := os.Rename(tmp, spec); err != nil {
		t.Fatal(err)
	}
	later = later.Add(time.Hour)
	if err := injects(uuids[0]); err != nil {
		t.Fatalf("after the spec was replaced by one with the first GPU again: %v", err)
	}
	// Removed, then added under another name.
	if err := os.Remove(spec); err != nil {
		t.Fatal(err)
	}
	later = later.Add(time.Hour)
	if err := injects(uuids[0]); err == nil {
		t.Fatal("a GPU was injected after its only spec was removed")
	}
	writeSpec(t, dir, "other.yaml", gpuSpec(uuids))
	later = later.Add(time.Hour)
	if err := injects(uuids[0]); err != nil {
		t.Fatalf("after a spec was added: %v", err)
	}
	if got := reads(); got != 5 {
		t.Fatalf("reads after a replace, a removal and an addition: %d, want 5", got)
	}
	// A file that is not a spec changes nothing the CDI library reads.
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := injects(uuids[0]); err != nil || reads() != 5 {
		t.Fatalf("after a non-spec file was written: %v, %d reads, want 5", err, reads())
	}

	// Changed just now, by the real clock: read each time.
	in.clock = nil
	writeSpec(t, dir, "other.yaml", gpuSpec(uuids))
	for range 2 {
		if err := injects(uuids[0]); err != nil {
			t.Fatal(err)
		}
	}
	if got := reads(); got != 7 {
		t.Fatalf("reads of a spec changed within the last %s: %d, want 7 (every injection)", racyWindow, got)
	}
}

// specsState, which decides whether the specs are parsed again, changes
// with every change the CDI library would read (a spec written, replaced,
// added, removed, re-linked) and with nothing else, and is not trusted
// (settled false) while a spec changed within racyWindow.
func TestSpecsStateSeesEveryChange(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dirs := []string{dir, filepath.Join(dir, "absent")}
	later := time.Now().Add(time.Hour)
	state := func() string {
		t.Helper()
		s, settled := specsState(dirs, later)
		if !settled {
			t.Fatal("the specs are not settled an hour after their last change")
		}
		return s
	}
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	last := ""
	step := func(what string, changed bool) {
		t.Helper()
		s := state()
		if (s != last) != changed {
			t.Errorf("%s: state changed %v, want %v", what, s != last, changed)
		}
		last = s
	}
	write("a.json", "{}")
	step("a spec written", true)
	step("nothing", false)
	write("notes.txt", "x")
	if err := os.Mkdir(filepath.Join(dir, "sub.json"), 0o755); err != nil {
		t.Fatal(err)
	}
	step("a file that is not a spec and a directory", false)
	write("a.json", "{ }")
	step("a spec rewritten", true)
	write("b.tmp", "{ }")
	if err := os.Rename(filepath.Join(dir, "b.tmp"), filepath.Join(dir, "a.json")); err != nil {
		t.Fatal(err)
	}
	step("a spec replaced by a rename, same size", true)
	write("target.txt", "{}")
	if err := os.Symlink(filepath.Join(dir, "target.txt"), filepath.Join(dir, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	step("a link to a spec added", true)
	write("target.txt", "{  }")
	step("the link's target rewritten", true)
	write("other.txt", "{}")
	if err := os.Remove(filepath.Join(dir, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "other.txt"), filepath.Join(dir, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	step("the link pointed elsewhere", true)
	if err := os.Remove(filepath.Join(dir, "a.json")); err != nil {
		t.Fatal(err)
	}
	step("a spec removed", true)

	if _, settled := specsState(dirs, time.Now()); settled {
		t.Error("specs changed a moment ago count as settled")
	}
}
