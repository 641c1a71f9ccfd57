package cdi

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
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
