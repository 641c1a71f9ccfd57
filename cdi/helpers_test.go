package cdi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// fakeDriverRoot holds the driver files the hand-written specs mount:
// root-owned regular files, not writable by others, as a driver's are.
var fakeDriverRoot string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cdi-driver-")
	if err != nil {
		panic(err)
	}
	_ = os.Chmod(dir, 0o755)
	fakeDriverRoot = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fakeDriverFile is a driver file under fakeDriverRoot, created on first
// use.
func fakeDriverFile(name string) string {
	path := filepath.Join(fakeDriverRoot, name)
	if _, err := os.Stat(path); err != nil {
		if err := os.WriteFile(path, []byte("driver file "+name+"\n"), 0o644); err != nil {
			panic(err)
		}
		_ = os.Chmod(path, 0o644)
	}
	return path
}

// fakeUUIDs are the GPUs of the hand-written test specs.
func fakeUUIDs() []string {
	return []string{
		"GPU-0a0a0a0a-0000-4000-8000-000000000000",
		"GPU-1b1b1b1b-1111-4111-8111-111111111111",
		"GPU-2c2c2c2c-2222-4222-8222-222222222222",
		"GPU-3d3d3d3d-3333-4333-8333-333333333333",
	}
}

// hostNodes are harmless host character devices that stand in for
// /dev/nvidia0..3: the CDI library stats a device node's host path to learn
// its type and numbers, so the path must exist and be a device, and these
// four have distinct numbers (1:3, 1:5, 1:7, 1:9).
func hostNodes() []string { return []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"} }

// gpuSpec is a spec like nvidia-ctk's, by UUID: each device adds its node,
// an env entry and a read-only mount; the spec-level edits add the driver's
// env, a library mount and one hook that the default policy allows.
func gpuSpec(uuids []string) *cdispec.Spec {
	raw := &cdispec.Spec{
		Version: "0.6.0",
		Kind:    Kind,
		ContainerEdits: cdispec.ContainerEdits{
			Env: []string{"NVIDIA_VISIBLE_DEVICES=void", "FAKE_DRIVER=550.54.15"},
			Mounts: []*cdispec.Mount{{
				HostPath: fakeDriverFile("libcuda.so.550.54.15"), ContainerPath: "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
				Options: []string{"ro", "nosuid", "nodev", "bind"},
			}},
			Hooks: []*cdispec.Hook{{
				HookName: cdilib.CreateContainerHook, Path: "/usr/bin/nvidia-cdi-hook",
				Args: []string{"nvidia-cdi-hook", "update-ldcache"}, Env: []string{"NVIDIA_CTK_DEBUG=false"},
			}},
		},
	}
	for i, u := range uuids {
		raw.Devices = append(raw.Devices, cdispec.Device{
			Name: u,
			ContainerEdits: cdispec.ContainerEdits{
				DeviceNodes: []*cdispec.DeviceNode{{Path: fmt.Sprintf("/dev/nvidia%d", i), HostPath: hostNodes()[i%len(hostNodes())]}},
				Env:         []string{fmt.Sprintf("FAKE_GPU_%d=%s", i, u)},
				Mounts: []*cdispec.Mount{{
					HostPath: fakeDriverFile(fmt.Sprintf("fake-gpu-%d.bin", i)), ContainerPath: fmt.Sprintf("/run/fake-gpu-%d", i),
					Options: []string{"ro", "nosuid", "nodev", "bind"},
				}},
			},
		})
	}
	return raw
}

// writeSpec writes raw as dir/name in JSON and returns its path.
func writeSpec(t *testing.T, dir, name string, raw *cdispec.Spec) string {
	t.Helper()
	data, err := json.MarshalIndent(raw, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// recordingCache notes every device name the Injector asks the CDI library
// for, so a test can see that only UUID names are ever used.
type recordingCache struct {
	specCache
	mu    sync.Mutex
	names []string
}

func (r *recordingCache) GetDevice(name string) *cdilib.Device {
	r.mu.Lock()
	r.names = append(r.names, name)
	r.mu.Unlock()
	return r.specCache.GetDevice(name)
}

func (r *recordingCache) asked() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.names)
}

// newTestInjector builds an Injector over dirs that records the device
// names it looks up and logs into the returned buffer.
func newTestInjector(t *testing.T, dirs []string, hookPaths ...string) (*Injector, *recordingCache, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// The hand-written specs stand /dev/null and friends (major 1) in for
	// GPU nodes; the fake driver root's nvidia-uvm has major 510.
	in, err := New(Config{SpecDirs: dirs, AllowedHookPaths: hookPaths, Logger: logger, DeviceMajors: []int64{1, nvidiaMajor, 510}})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingCache{specCache: in.cache}
	in.cache = rec
	return in, rec, logs
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// defaultSpec is containerd's default OCI spec for a container whose image
// and request ask for every GPU the legacy way.
func defaultSpec(t *testing.T) (context.Context, *containers.Container, *oci.Spec) {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "rentals")
	c := &containers.Container{ID: "instance-1"}
	s := &oci.Spec{}
	opts := []oci.SpecOpts{
		oci.WithDefaultSpec(),
		oci.WithEnv([]string{"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all", "CUDA_VISIBLE_DEVICES=0,1"}),
		oci.WithAnnotations(map[string]string{"cdi.k8s.io/request": "nvidia.com/gpu=all", "other": "kept"}),
	}
	for _, o := range opts {
		if err := o(ctx, nil, c, s); err != nil {
			t.Fatal(err)
		}
	}
	return ctx, c, s
}

// inject builds the option for uuids and applies it to a default spec.
func inject(t *testing.T, in *Injector, uuids []string) (*oci.Spec, error) {
	t.Helper()
	ctx, c, s := defaultSpec(t)
	opt, err := in.SpecOpts(uuids)
	if err != nil {
		return nil, err
	}
	return s, opt(ctx, nil, c, s)
}

func devicePaths(s *oci.Spec) []string {
	var out []string
	if s.Linux != nil {
		for _, d := range s.Linux.Devices {
			out = append(out, d.Path)
		}
	}
	slices.Sort(out)
	return out
}

func envValues(s *oci.Spec, name string) []string {
	var out []string
	for _, kv := range s.Process.Env {
		if k, v, _ := strings.Cut(kv, "="); k == name {
			out = append(out, v)
		}
	}
	return out
}
