package cdi

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzSpecLoading: any file in a spec directory, JSON or YAML, loads or is
// reported as a problem, never a panic; and when it lets a GPU be
// injected, what reaches the container stays within the policy: only the
// allowed hook subcommands at the allowed stages, and device nodes only of
// the allowed majors.
func FuzzSpecLoading(f *testing.F) {
	good, err := json.Marshal(gpuSpec(fakeUUIDs()[:2]))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, false)
	f.Add([]byte(`{"cdiVersion":"0.6.0","kind":"nvidia.com/gpu","devices":[]}`), false)
	f.Add([]byte("cdiVersion: 0.6.0\nkind: nvidia.com/gpu\ndevices:\n- name: x\n  containerEdits:\n    deviceNodes:\n    - path: /dev/sda\n"), true)
	f.Add([]byte(`{"cdiVersion":"0.6.0","kind":"nvidia.com/gpu","devices":[{"name":"GPU-0a0a0a0a-0000-4000-8000-000000000000",`+
		`"containerEdits":{"hooks":[{"hookName":"createContainer","path":"/bin/sh","args":["sh","-c","id"]}]}}]}`), false)
	f.Add([]byte(`{"cdiVersion":"0.6.0","kind":"nvidia.com/gpu","devices":[{"name":"GPU-0a0a0a0a-0000-4000-8000-000000000000",`+
		`"containerEdits":{"deviceNodes":[{"path":"/dev/nvidia0","hostPath":"/dev/sda","type":"b","major":8}]}}]}`), false)
	f.Add([]byte(`{"cdiVersion":"0.6.0","kind":"nvidia.com/gpu","devices":[{"name":"GPU-0a0a0a0a-0000-4000-8000-000000000000",`+
		`"containerEdits":{"mounts":[{"hostPath":"/","containerPath":"/host","options":["rbind","rw"]}]}}]}`), false)
	f.Add([]byte(`{"cdiVersion":"99.0.0","kind":"nvidia.com/gpu"}`), false)
	f.Add([]byte(`{"kind":"../../etc/passwd"}`), false)
	f.Add([]byte("a: &a [*a, *a, *a]\n"), true)
	f.Add([]byte{}, true)
	f.Add([]byte("\x00\xff"), false)
	f.Fuzz(func(t *testing.T, data []byte, yaml bool) {
		dir := t.TempDir()
		name := "fuzz.json"
		if yaml {
			name = "fuzz.yaml"
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		in, _, _ := newTestInjector(t, []string{dir})
		_ = in.Report()
		s, err := inject(t, in, fakeUUIDs()[:1])
		if err != nil {
			return
		}
		if s.Hooks != nil {
			all := append(append(append(append(s.Hooks.Prestart, s.Hooks.CreateRuntime...), s.Hooks.CreateContainer...),
				s.Hooks.StartContainer...), s.Hooks.Poststart...)
			all = append(all, s.Hooks.Poststop...)
			if len(s.Hooks.Prestart)+len(s.Hooks.Poststart)+len(s.Hooks.Poststop) > 0 {
				t.Fatalf("a spec put hooks at a refused stage: %+v", s.Hooks)
			}
			for _, h := range all {
				sub := ""
				switch {
				case len(h.Args) >= 3 && filepath.Base(h.Path) == "nvidia-ctk" && h.Args[1] == "hook":
					sub = h.Args[2]
				case len(h.Args) >= 2 && filepath.Base(h.Path) == "nvidia-cdi-hook":
					sub = h.Args[1]
				}
				if !slices.Contains(hookSubcommands, sub) {
					t.Fatalf("a spec got a hook through the policy: %+v", h)
				}
			}
		}
		allowed := []int64{1, nvidiaMajor, 510}
		if s.Linux != nil {
			for _, d := range s.Linux.Devices {
				if !slices.Contains(allowed, d.Major) {
					t.Fatalf("a spec got device %s (%d:%d) through the policy", d.Path, d.Major, d.Minor)
				}
			}
		}
	})
}
