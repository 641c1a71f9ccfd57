package containerd

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime"
)

func TestWithResources(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		res   runtime.Resources
		check func(*testing.T, *oci.Spec)
	}{
		{"none", runtime.Resources{}, func(t *testing.T, s *oci.Spec) {
			if r := s.Linux.Resources; r != nil && (r.CPU != nil || r.Memory != nil || r.Pids != nil) {
				t.Errorf("limits set without a request: %+v", r)
			}
		}},
		{"cpus", runtime.Resources{CPUs: 2.5}, func(t *testing.T, s *oci.Spec) {
			if c := s.Linux.Resources.CPU; *c.Quota != 250000 || *c.Period != 100000 {
				t.Errorf("cpu = %d/%d", *c.Quota, *c.Period)
			}
		}},
		{"memory without swap", runtime.Resources{MemoryMB: 512}, func(t *testing.T, s *oci.Spec) {
			if m := s.Linux.Resources.Memory; *m.Limit != 512<<20 || *m.Swap != 512<<20 {
				t.Errorf("memory = %d swap %d", *m.Limit, *m.Swap)
			}
		}},
		{"pids", runtime.Resources{Pids: 100}, func(t *testing.T, s *oci.Spec) {
			if p := s.Linux.Resources.Pids; p.Limit != nil && *p.Limit != 100 {
				t.Errorf("pids = %d", *p.Limit)
			}
		}},
		{"shm", runtime.Resources{ShmMB: 256}, func(t *testing.T, s *oci.Spec) {
			for _, m := range s.Mounts {
				if m.Destination == "/dev/shm" {
					if !strings.Contains(strings.Join(m.Options, ","), "size=262144k") {
						t.Errorf("/dev/shm options = %v", m.Options)
					}
					return
				}
			}
			t.Error("no /dev/shm mount")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := defaultSpec(t)
			if err := withResources(tc.res)(context.Background(), nil, &containers.Container{}, s); err != nil {
				t.Fatal(err)
			}
			tc.check(t, s)
		})
	}
}

func TestConfinement(t *testing.T) {
	t.Parallel()
	s := defaultSpec(t)
	if err := verifyConfined(runtime.DevicePlan{})(context.Background(), nil, nil, s); err == nil {
		t.Fatal("the bare default spec (no seccomp, no no_new_privileges) passed verification")
	}
	if err := withConfinement()(context.Background(), nil, &containers.Container{}, s); err != nil {
		t.Fatal(err)
	}
	if err := verifyConfined(runtime.DevicePlan{})(context.Background(), nil, nil, s); err != nil {
		t.Fatalf("confined spec refused: %v", err)
	}
	for _, tc := range []struct {
		name   string
		loosen func(*oci.Spec)
	}{
		{"host bind mount", func(s *oci.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Source: "/", Type: "bind", Options: []string{"rbind"}})
		}},
		{"bind by option", func(s *oci.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/x", Source: "/etc", Type: "none", Options: []string{"bind"}})
		}},
		{"privileges", func(s *oci.Spec) { s.Process.NoNewPrivileges = false }},
		{"no seccomp", func(s *oci.Spec) { s.Linux.Seccomp = nil }},
		{"sys_admin", func(s *oci.Spec) {
			s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := *s
			c.Process = &specs.Process{}
			*c.Process = *s.Process
			caps := *s.Process.Capabilities
			c.Process.Capabilities = &caps
			c.Linux = &specs.Linux{}
			*c.Linux = *s.Linux
			c.Mounts = append([]specs.Mount(nil), s.Mounts...)
			tc.loosen(&c)
			if err := verifyConfined(runtime.DevicePlan{})(context.Background(), nil, nil, &c); err == nil {
				t.Fatal("loosened spec passed verification")
			}
		})
	}
}

func TestEnvListSorted(t *testing.T) {
	t.Parallel()
	got := strings.Join(envList(map[string]string{"B": "2", "A": "1=x", "C": ""}), " ")
	if got != "A=1=x B=2 C=" {
		t.Fatalf("envList = %q", got)
	}
}

func defaultSpec(t *testing.T) *oci.Spec {
	t.Helper()
	var s oci.Spec
	ctx := namespaces.WithNamespace(context.Background(), "test")
	if err := oci.WithDefaultSpec()(ctx, nil, &containers.Container{ID: "test"}, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}
