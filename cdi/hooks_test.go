package cdi

import (
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/internal/testenv"
)

func TestUnsafeHooksAreRefused(t *testing.T) {
	t.Parallel()
	hook := func(path string, env ...string) *cdispec.Hook {
		return &cdispec.Hook{HookName: cdilib.CreateContainerHook, Path: path, Args: []string{"x"}, Env: env}
	}
	const ok = "/usr/bin/nvidia-cdi-hook"
	tests := []struct {
		name string
		// edit makes the spec unsafe: in its spec-level edits or in the
		// edits of device 0, the one injected.
		edit   func(s *cdispec.Spec)
		reason string
		path   string
	}{
		{"spec-level hook without env", func(s *cdispec.Spec) {
			s.ContainerEdits.Hooks[0].Env = nil
		}, "no explicit env", ok},
		{"empty env, which OCI drops", func(s *cdispec.Spec) {
			s.ContainerEdits.Hooks[0].Env = []string{}
		}, "no explicit env", ok},
		{"device hook outside the allowlist", func(s *cdispec.Spec) {
			s.Devices[0].ContainerEdits.Hooks = []*cdispec.Hook{hook("/tmp/evil", "A=1")}
		}, "not in the allowed hook paths", "/tmp/evil"},
		{"relative path", func(s *cdispec.Spec) {
			s.Devices[0].ContainerEdits.Hooks = []*cdispec.Hook{hook("nvidia-cdi-hook", "A=1")}
		}, "not in the allowed hook paths", "nvidia-cdi-hook"},
		{"unclean path", func(s *cdispec.Spec) {
			s.Devices[0].ContainerEdits.Hooks = []*cdispec.Hook{hook("/usr/bin/../bin/nvidia-ctk", "A=1")}
		}, "not in the allowed hook paths", "/usr/bin/../bin/nvidia-ctk"},
		{"LD_PRELOAD", func(s *cdispec.Spec) {
			s.Devices[0].ContainerEdits.Hooks = []*cdispec.Hook{hook(ok, "NVIDIA_CTK_DEBUG=false", "LD_PRELOAD=/proc/self/cwd/x.so")}
		}, "LD_PRELOAD", ok},
		{"LD_LIBRARY_PATH at spec level", func(s *cdispec.Spec) {
			s.ContainerEdits.Hooks[0].Env = append(s.ContainerEdits.Hooks[0].Env, "LD_LIBRARY_PATH=/tmp")
		}, "LD_LIBRARY_PATH", ok},
		{"GLIBC_TUNABLES", func(s *cdispec.Spec) {
			s.Devices[0].ContainerEdits.Hooks = []*cdispec.Hook{hook(ok, "GLIBC_TUNABLES=glibc.x=1")}
		}, "GLIBC_TUNABLES", ok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			raw := gpuSpec(fakeUUIDs())
			tt.edit(raw)
			file := writeSpec(t, dir, "nvidia.json", raw)
			in, _, logs := newTestInjector(t, []string{dir})

			_, err := in.SpecOpts(fakeUUIDs()[:1])
			if !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("SpecOpts = %v, want FailedPrecondition", err)
			}
			for _, want := range []string{file, tt.path, tt.reason} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			if !strings.Contains(logs.String(), "unsafe hook") || !strings.Contains(logs.String(), file) {
				t.Errorf("refusal not logged with the spec file: %s", logs)
			}
			r := in.Report()
			if len(r.Problems) == 0 {
				t.Error("Report has no problem for the unsafe hook")
			}
			if slices.Contains(r.GPUDevices, qualifiedName(fakeUUIDs()[0])) {
				t.Errorf("Report offers the refused device: %v", r.GPUDevices)
			}
		})
	}
}

// TestUnsafeHookOfAnotherDevice: only what would be injected is judged, so
// a bad hook on a GPU that is not requested does not block the others.
func TestUnsafeHookOfAnotherDevice(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	dir := t.TempDir()
	raw := gpuSpec(fakeUUIDs())
	raw.Devices[3].ContainerEdits.Hooks = []*cdispec.Hook{{HookName: cdilib.CreateContainerHook, Path: "/tmp/evil"}}
	writeSpec(t, dir, "nvidia.json", raw)
	in, _, _ := newTestInjector(t, []string{dir})

	if _, err := inject(t, in, fakeUUIDs()[:1]); err != nil {
		t.Errorf("injecting GPU 0 = %v, want success", err)
	}
	if _, err := in.SpecOpts(fakeUUIDs()[3:]); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("injecting GPU 3 = %v, want FailedPrecondition", err)
	}
}

func TestConfiguredHookAllowlist(t *testing.T) {
	testenv.Require(t) // root: only root-owned specs and driver files are trusted
	t.Parallel()
	dir := t.TempDir()
	raw := gpuSpec(fakeUUIDs())
	raw.ContainerEdits.Hooks[0].Path = "/opt/nvidia/bin/nvidia-cdi-hook"
	writeSpec(t, dir, "nvidia.json", raw)

	in, _, _ := newTestInjector(t, []string{dir})
	if _, err := in.SpecOpts(fakeUUIDs()[:1]); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("hook outside the default allowlist = %v, want FailedPrecondition", err)
	}
	in, _, _ = newTestInjector(t, []string{dir}, "/opt/nvidia/bin/nvidia-cdi-hook")
	if _, err := inject(t, in, fakeUUIDs()[:1]); err != nil {
		t.Errorf("hook in the configured allowlist = %v, want success", err)
	}
	for _, bad := range []string{"nvidia-cdi-hook", "/opt/../usr/bin/nvidia-ctk", "/usr/bin/"} {
		if _, err := New(Config{AllowedHookPaths: []string{bad}}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("allowlist entry %q = %v, want InvalidArgument", bad, err)
		}
	}
}

func TestLoaderVariable(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]bool{
		"LD_PRELOAD": true, "LD_LIBRARY_PATH": true, "LD_AUDIT": true, "GCONV_PATH": true,
		"GLIBC_TUNABLES": true, "NVIDIA_CTK_DEBUG": false, "PATH": false, "ld_preload": false, "OLD_LD": false,
	} {
		if got := loaderVariable(name); got != want {
			t.Errorf("loaderVariable(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestHookProblemsEmptyEnv: an empty env list is refused like a missing
// one, whichever encoding the spec file used (JSON drops it, YAML keeps []).
func TestHookProblemsEmptyEnv(t *testing.T) {
	t.Parallel()
	p, err := newHookPolicy(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range [][]string{nil, {}} {
		got := p.hookProblems(&cdispec.Hook{HookName: cdilib.CreateContainerHook, Path: "/usr/bin/nvidia-ctk", Args: []string{"nvidia-ctk", "hook", "update-ldcache"}, Env: env})
		if len(got) != 1 || got[0] != "no explicit env" {
			t.Errorf("env %#v: problems %v", env, got)
		}
	}
	if got := p.hookProblems(&cdispec.Hook{HookName: cdilib.CreateContainerHook, Path: "/usr/bin/nvidia-ctk", Args: []string{"nvidia-ctk", "hook", "update-ldcache"}, Env: []string{"NVIDIA_CTK_DEBUG=false"}}); len(got) != 0 {
		t.Errorf("safe hook: problems %v", got)
	}
}
