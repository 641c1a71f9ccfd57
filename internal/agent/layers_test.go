package agent

import (
	"go/parser"
	gotoken "go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/host-agent/host-agent"

// layers orders the agent's packages from the bottom up, as doc.go
// describes them: a package imports only packages of its own layer or
// below. A package is placed by the longest entry that is it or a folder
// above it.
var layers = map[string]int{
	"gpu":                       1,
	"runtime/hostinfo":          1,
	"runtime/hostport":          1,
	"runtime/containerd/daemon": 1,
	"internal/testenv/payload":  1,
	"cmd/gpu-check/probe":       1,
	"deploy":                    1,

	"runtime/events": 2,

	"runtime": 3,

	"cdi":                      4,
	"runtime/events/gpuevents": 4,
	"runtime/backend":          4,
	"runtime/gpualloc":         4,
	"runtime/share":            4,
	"runtime/disk":             4,
	"runtime/usage":            4,
	"runtime/volume":           4,
	"runtime/numa":             4,
	"runtime/network":          4,

	"runtime/containerd": 5,
	"runtime/docker":     5,
	"internal/testenv":   5,

	"runtime/lifecycle":    6,
	"internal/invariant":   6,
	"runtime/selftest":     6,
	"internal/conformance": 6,

	"server/reporter": 7,
	"server":          8,
	"internal/agent":  9,
	"cmd":             10,
}

func layerOf(pkg string) (int, bool) {
	for p := pkg; ; p = filepath.Dir(p) {
		if l, ok := layers[p]; ok {
			return l, true
		}
		if p == "." || p == "/" {
			return 0, false
		}
	}
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// TestImportsFlowDown reads the imports of every package's non-test
// files and fails on an import of a package above the importer (gpu
// importing runtime/events, a back end importing the server) or of a
// package no layer names.
func TestImportsFlowDown(t *testing.T) {
	t.Parallel()
	root := moduleRoot(t)
	fset := gotoken.NewFileSet()
	seen := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		pkg := filepath.ToSlash(rel)
		own, ok := layerOf(pkg)
		if !ok {
			t.Errorf("%s: package %s is in no layer: place it in layers (and in doc.go)", filepath.ToSlash(filepath.Join(rel, name)), pkg)
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		seen++
		for _, imp := range f.Imports {
			ip, _ := strconv.Unquote(imp.Path.Value)
			dep, ok := strings.CutPrefix(ip, module+"/")
			if !ok {
				continue
			}
			l, ok := layerOf(dep)
			if !ok {
				t.Errorf("%s imports %s, which is in no layer", pkg, dep)
				continue
			}
			if l > own {
				t.Errorf("%s (layer %d) imports %s (layer %d), a package above it", filepath.ToSlash(filepath.Join(rel, name)), own, dep, l)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 100 {
		t.Fatalf("read %d files: the walk missed the tree", seen)
	}
}

// testSupport is what only tests (and the benchmark) may import.
var testSupport = []string{"internal/testenv", "internal/conformance", "internal/invariant"}

// TestShippedBinariesHoldNoTestSupport follows the imports of the
// programs that ship (the daemon, gpu-check) through the module's
// non-test files: none reaches the test support under internal/.
func TestShippedBinariesHoldNoTestSupport(t *testing.T) {
	t.Parallel()
	root := moduleRoot(t)
	fset := gotoken.NewFileSet()
	imports := func(pkg string) []string {
		entries, err := os.ReadDir(filepath.Join(root, pkg))
		if err != nil {
			t.Fatal(err)
		}
		var deps []string
		for _, e := range entries {
			name := e.Name()
			if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, filepath.Join(root, pkg, name), nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range f.Imports {
				ip, _ := strconv.Unquote(imp.Path.Value)
				if dep, ok := strings.CutPrefix(ip, module+"/"); ok {
					deps = append(deps, dep)
				}
			}
		}
		return deps
	}
	for _, bin := range []string{"cmd/host-agent", "cmd/gpu-check"} {
		via := map[string]string{bin: ""}
		queue := []string{bin}
		for len(queue) > 0 {
			pkg := queue[0]
			queue = queue[1:]
			for _, dep := range imports(pkg) {
				if _, ok := via[dep]; ok {
					continue
				}
				via[dep] = pkg
				queue = append(queue, dep)
			}
		}
		if len(via) < 10 {
			t.Fatalf("%s: followed %d packages: the walk missed its imports", bin, len(via))
		}
		for _, ts := range testSupport {
			if from, ok := via[ts]; ok {
				t.Errorf("%s imports the test support %s (through %s)", bin, ts, from)
			}
		}
	}
}
