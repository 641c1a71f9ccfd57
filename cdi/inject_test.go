package cdi

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/internal/testenv"
)

func TestSpecOptsInjectsExactlyTheAllocatedGPUs(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	uuids := fakeUUIDs()
	dir := t.TempDir()
	writeSpec(t, dir, "nvidia.yaml", gpuSpec(uuids))
	in, rec, _ := newTestInjector(t, []string{t.TempDir(), dir})

	tests := []struct {
		name      string
		allocated []int
	}{
		{"two of four", []int{0, 2}},
		{"one", []int{3}},
		{"all four, by UUID", []int{0, 1, 2, 3}},
		{"none", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var req, wantNodes, wantNames []string
			for _, i := range tt.allocated {
				req = append(req, uuids[i])
				wantNodes = append(wantNodes, fmt.Sprintf("/dev/nvidia%d", i))
				wantNames = append(wantNames, qualifiedName(uuids[i]))
			}
			s, err := inject(t, in, req)
			if err != nil {
				t.Fatalf("inject %v: %v", req, err)
			}
			if got := devicePaths(s); !slices.Equal(got, wantNodes) {
				t.Errorf("device nodes = %v, want exactly %v", got, wantNodes)
			}
			for i, u := range uuids {
				allocated := slices.Contains(tt.allocated, i)
				if got := envValues(s, fmt.Sprintf("FAKE_GPU_%d", i)); (len(got) == 1 && got[0] == u) != allocated {
					t.Errorf("FAKE_GPU_%d = %v, allocated %v", i, got, allocated)
				}
				mounted := slices.ContainsFunc(s.Mounts, func(m specs.Mount) bool {
					return m.Destination == fmt.Sprintf("/run/fake-gpu-%d", i) && slices.Contains(m.Options, "ro")
				})
				if mounted != allocated {
					t.Errorf("read-only mount of GPU %d present %v, allocated %v", i, mounted, allocated)
				}
				if allowsHostNode(s, hostNodes()[i]) != allocated {
					t.Errorf("device cgroup allows GPU %d's node: %v, allocated %v", i, !allocated, allocated)
				}
			}
			if got := envValues(s, "FAKE_DRIVER"); (len(got) == 1) != (len(req) > 0) {
				t.Errorf("spec-level env FAKE_DRIVER = %v with %d GPUs", got, len(req))
			}
			if got := envValues(s, visibleDevicesEnv); !slices.Equal(got, []string{"void"}) {
				t.Errorf("NVIDIA_VISIBLE_DEVICES = %v, want exactly [void] although the image asked for all", got)
			}
			if got := envValues(s, "CUDA_VISIBLE_DEVICES"); !slices.Equal(got, []string{"0,1"}) {
				t.Errorf("CUDA_VISIBLE_DEVICES = %v, want it untouched", got)
			}
			if _, ok := s.Annotations["cdi.k8s.io/request"]; ok || s.Annotations["other"] != "kept" {
				t.Errorf("annotations = %v, want CDI requests dropped and the rest kept", s.Annotations)
			}
			for _, n := range rec.asked() {
				if !strings.HasPrefix(n, Kind+"=GPU-") {
					t.Errorf("asked the CDI library for %q; only UUID names may be used", n)
				}
			}
		})
	}
}

// allowsHostNode reports whether the device cgroup has an allow rule for the
// numbers of a host device node.
func allowsHostNode(s *specs.Spec, hostPath string) bool {
	id, ok := nodeIDOf(&cdispec.DeviceNode{HostPath: hostPath, Path: hostPath})
	if !ok {
		return false
	}
	for _, r := range s.Linux.Resources.Devices {
		if r.Allow && r.Major != nil && r.Minor != nil && *r.Major == id.major && *r.Minor == id.minor {
			return true
		}
	}
	return false
}

func TestSpecOptsRefusesAnythingButAGPUUUID(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeSpec(t, dir, "nvidia.json", gpuSpec(fakeUUIDs()))
	// Also define the names a careless caller might reach for, so that
	// only the refusal, not a failed lookup, can make the test pass.
	extra := gpuSpec([]string{"all", "0", "1"})
	writeSpec(t, dir, "extra.json", extra)

	in, rec, _ := newTestInjector(t, []string{dir})
	for _, id := range []string{"all", "0", "1", "nvidia.com/gpu=all", "nvidia.com/gpu=" + fakeUUIDs()[0],
		"MIG-GPU-0a0a0a0a-0000-4000-8000-000000000000/1/0", "MIG-0a0a0a0a", "GPU-0a0a0a0a", "gpu-0a0a0a0a-0000-4000-8000-000000000000", ""} {
		t.Run(fmt.Sprintf("%q", id), func(t *testing.T) {
			_, err := in.SpecOpts([]string{fakeUUIDs()[1], id})
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("SpecOpts(%q) = %v, want InvalidArgument", id, err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", id)) {
				t.Errorf("error %q does not name %q", err, id)
			}
		})
	}
	if asked := rec.asked(); len(asked) != 0 {
		t.Errorf("refused requests still looked up %v", asked)
	}
}

func TestSpecOptsRefusesUnknownGPU(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeSpec(t, dir, "nvidia.json", gpuSpec(fakeUUIDs()[:2]))
	in, rec, _ := newTestInjector(t, []string{dir})

	unknown := "GPU-ffffffff-ffff-4fff-8fff-ffffffffffff"
	_, err := in.SpecOpts([]string{fakeUUIDs()[0], unknown})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), unknown) {
		t.Fatalf("SpecOpts with an unknown GPU = %v, want FailedPrecondition naming it", err)
	}
	want := []string{qualifiedName(fakeUUIDs()[0]), qualifiedName(unknown)}
	if got := rec.asked(); !slices.Equal(got, want) {
		t.Errorf("looked up %v, want exactly %v", got, want)
	}
}

func TestSpecOptsWithoutSpecsStillSanitises(t *testing.T) {
	t.Parallel()
	in, _, _ := newTestInjector(t, []string{t.TempDir() + "/missing"})
	if in.Available() {
		t.Error("Available() with no specs = true")
	}
	if _, err := in.SpecOpts(fakeUUIDs()[:1]); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("SpecOpts for a GPU without specs = %v, want FailedPrecondition", err)
	}
	s, err := inject(t, in, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := envValues(s, visibleDevicesEnv); !slices.Equal(got, []string{"void"}) {
		t.Errorf("NVIDIA_VISIBLE_DEVICES = %v, want [void]", got)
	}
	if got := devicePaths(s); len(got) != 0 {
		t.Errorf("device nodes = %v, want none", got)
	}
}

func TestSpecOptsSeesSpecsWrittenLater(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	dir := t.TempDir()
	in, _, _ := newTestInjector(t, []string{dir})
	if _, err := in.SpecOpts(fakeUUIDs()[:1]); err == nil {
		t.Fatal("SpecOpts before any spec exists succeeded")
	}
	writeSpec(t, dir, "nvidia.json", gpuSpec(fakeUUIDs()))
	s, err := inject(t, in, fakeUUIDs()[:1])
	if err != nil {
		t.Fatal(err)
	}
	if got := devicePaths(s); !slices.Equal(got, []string{"/dev/nvidia0"}) {
		t.Errorf("device nodes = %v", got)
	}
}

// TestSpecOptsConcurrent runs injections side by side; with -race it shows
// that an injection does not write to specs the cache shares.
func TestSpecOptsConcurrent(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	dir := t.TempDir()
	writeSpec(t, dir, "nvidia.json", gpuSpec(fakeUUIDs()))
	in, _, _ := newTestInjector(t, []string{dir})

	opt, err := in.SpecOpts(fakeUUIDs()[1:2])
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			ctx, c, s := defaultSpec(t)
			if i%2 == 0 { // a shared option applied twice, and fresh ones
				errs <- opt(ctx, nil, c, s)
				return
			}
			o, err := in.SpecOpts([]string{fakeUUIDs()[i%4]})
			if err != nil {
				errs <- err
				return
			}
			errs <- o(ctx, nil, c, s)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestReport(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	static, dynamic := t.TempDir(), t.TempDir()
	path := writeSpec(t, dynamic, "nvidia.json", gpuSpec(fakeUUIDs()[:2]))
	broken := filepath.Join(static, "broken.yaml")
	if err := os.WriteFile(broken, []byte("cdiVersion: 0.6.0\nkind: nvidia.com/gpu\ndevices: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	in, _, _ := newTestInjector(t, []string{static, dynamic})

	r := in.Report()
	if !r.Available || !in.Available() {
		t.Error("Available = false with a loaded GPU spec")
	}
	if !slices.Equal(r.SpecFiles, []string{path}) || !slices.Equal(r.Vendors, []string{Vendor}) {
		t.Errorf("files %v vendors %v, want [%s] [%s]", r.SpecFiles, r.Vendors, path, Vendor)
	}
	want := []string{qualifiedName(fakeUUIDs()[0]), qualifiedName(fakeUUIDs()[1])}
	if !slices.Equal(r.GPUDevices, want) {
		t.Errorf("GPU devices %v, want %v", r.GPUDevices, want)
	}
	if !slices.Equal(r.SpecDirs, []string{static, dynamic}) {
		t.Errorf("spec dirs %v", r.SpecDirs)
	}
	if len(r.Problems) != 1 || !strings.HasPrefix(r.Problems[0], broken) {
		t.Errorf("problems %v, want one about %s", r.Problems, broken)
	}
}

func TestNewRefusesRelativeDirs(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{SpecDirs: []string{"etc/cdi"}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("New with a relative spec dir = %v, want InvalidArgument", err)
	}
	in, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(in.SpecDirs(), []string{"/etc/cdi", "/var/run/cdi"}) {
		t.Errorf("default spec dirs %v", in.SpecDirs())
	}
}
