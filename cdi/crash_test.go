package cdi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/internal/testenv"
)

// A spec file that makes the CDI library panic (found by FuzzSpecLoading:
// a null device node) neither crashes the agent when the injector is made
// nor when it rereads the directory: the report names the file, no GPU is
// injected while it is there (not even those of a good spec beside it),
// and removing it brings injection back.
func TestSpecCrashingTheLibrary(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	dir := t.TempDir()
	uuids := fakeUUIDs()[:1]
	writeSpec(t, dir, "nvidia.json", gpuSpec(uuids))
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("cdiVersion: 0.1.0\ncontainerEdits:\n deviceNodes:\n -"), 0o644); err != nil {
		t.Fatal(err)
	}
	in, _, _ := newTestInjector(t, []string{dir})
	r := in.Report()
	if r.Available || !strings.Contains(strings.Join(r.Problems, "\n"), bad+": crashes the CDI library") {
		t.Fatalf("report with a crashing spec: %+v", r)
	}
	if _, err := inject(t, in, uuids); err == nil {
		t.Fatal("a GPU was injected while a spec crashes the CDI library")
	}
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}
	if _, err := inject(t, in, uuids); err != nil {
		t.Fatalf("after removing the crashing spec: %v", err)
	}
	if r := in.Report(); !r.Available || len(r.Problems) != 0 {
		t.Fatalf("report after removing the crashing spec: %+v", r)
	}
}
