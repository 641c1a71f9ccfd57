package containerd

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
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
		{"cpuset", runtime.Resources{CPUs: 2, CPUSetCPUs: "0-15,32-47", CPUSetMems: "0"}, func(t *testing.T, s *oci.Spec) {
			if c := s.Linux.Resources.CPU; c.Cpus != "0-15,32-47" || c.Mems != "0" || *c.Quota != 200000 {
				t.Errorf("cpu = %+v", c)
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
	if err := verifyConfined(runtime.DevicePlan{}, nil, "", "")(context.Background(), nil, nil, s); err == nil {
		t.Fatal("the bare default spec (no seccomp, no no_new_privileges) passed verification")
	}
	if err := withConfinement()(context.Background(), nil, &containers.Container{}, s); err != nil {
		t.Fatal(err)
	}
	if err := verifyConfined(runtime.DevicePlan{}, nil, "", "")(context.Background(), nil, nil, s); err != nil {
		t.Fatalf("confined spec refused: %v", err)
	}
	for _, set := range [][]string{s.Process.Capabilities.Bounding, s.Process.Capabilities.Effective, s.Process.Capabilities.Permitted} {
		if slices.Contains(set, "CAP_NET_RAW") || len(set) != len(backend.RentalCapabilities) {
			t.Errorf("capabilities %v, want %v", set, backend.RentalCapabilities)
		}
	}
	if s.Linux.Sysctl["net.ipv4.ping_group_range"] != "0 2147483647" {
		t.Errorf("sysctls %v: ping for every group missing", s.Linux.Sysctl)
	}
	// The rental's own pinned network namespace is allowed, and only it.
	pinned := *s
	pinned.Linux = &specs.Linux{}
	*pinned.Linux = *s.Linux
	pinned.Linux.Namespaces = append(slices.DeleteFunc(slices.Clone(s.Linux.Namespaces), func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace }),
		specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/run/host-agent/netns/x"})
	if err := verifyConfined(runtime.DevicePlan{}, nil, "/run/host-agent/netns/x", "")(context.Background(), nil, nil, &pinned); err != nil {
		t.Errorf("the rental's own network namespace refused: %v", err)
	}
	if err := verifyConfined(runtime.DevicePlan{}, nil, "/run/host-agent/netns/y", "")(context.Background(), nil, nil, &pinned); err == nil {
		t.Error("another network namespace accepted")
	}
	// Where the host has AppArmor, the rentals' profile is required.
	if err := verifyConfined(runtime.DevicePlan{}, nil, "", AppArmorProfile)(context.Background(), nil, nil, s); err == nil || !strings.Contains(err.Error(), "AppArmor") {
		t.Errorf("a spec without the AppArmor profile on an AppArmor host: %v", err)
	}
	armored := *s
	armored.Process = &specs.Process{}
	*armored.Process = *s.Process
	if err := oci.WithApparmorProfile(AppArmorProfile)(context.Background(), nil, nil, &armored); err != nil {
		t.Fatal(err)
	}
	if err := verifyConfined(runtime.DevicePlan{}, nil, "", AppArmorProfile)(context.Background(), nil, nil, &armored); err != nil {
		t.Errorf("the profile set: %v", err)
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
		{"host pid namespace", func(s *oci.Spec) {
			s.Linux.Namespaces = slices.DeleteFunc(slices.Clone(s.Linux.Namespaces), func(n specs.LinuxNamespace) bool { return n.Type == specs.PIDNamespace })
		}},
		{"joined network namespace", func(s *oci.Spec) {
			s.Linux.Namespaces = append(slices.Clone(s.Linux.Namespaces), specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/proc/1/ns/net"})
		}},
		{"joined user namespace", func(s *oci.Spec) {
			s.Linux.Namespaces = append(slices.Clone(s.Linux.Namespaces), specs.LinuxNamespace{Type: specs.UserNamespace, Path: "/proc/1/ns/user"})
		}},
		{"net_raw in the effective set", func(s *oci.Spec) {
			s.Process.Capabilities.Effective = append(slices.Clone(s.Process.Capabilities.Effective), "CAP_NET_RAW")
		}},
		{"net_admin in the permitted set", func(s *oci.Spec) {
			s.Process.Capabilities.Permitted = append(slices.Clone(s.Process.Capabilities.Permitted), "CAP_NET_ADMIN")
		}},
		{"sys_ptrace inheritable", func(s *oci.Spec) { s.Process.Capabilities.Inheritable = []string{"CAP_SYS_PTRACE"} }},
		{"ambient", func(s *oci.Spec) { s.Process.Capabilities.Ambient = []string{"CAP_KILL", "CAP_SYS_MODULE"} }},
		{"a second proc mount", func(s *oci.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host-proc", Source: "proc", Type: "proc"})
		}},
		{"proc twice at /proc", func(s *oci.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/proc", Source: "proc", Type: "proc"})
		}},
		{"a sysfs mount", func(s *oci.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/mnt/sys", Source: "sysfs", Type: "sysfs"})
		}},
		{"a sysctl", func(s *oci.Spec) {
			s.Linux.Sysctl = maps.Clone(s.Linux.Sysctl)
			s.Linux.Sysctl["kernel.shm_rmid_forced"] = "1"
		}},
		{"ping for nobody changed", func(s *oci.Spec) {
			s.Linux.Sysctl = maps.Clone(s.Linux.Sysctl)
			s.Linux.Sysctl["net.ipv4.ping_group_range"] = "0 0"
		}},
		{"working directory in /proc", func(s *oci.Spec) { s.Process.Cwd = "/proc/self/fd/7" }},
		{"working directory reaching /proc", func(s *oci.Spec) { s.Process.Cwd = "/tmp/../proc/1/cwd" }},
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
			err := verifyConfined(runtime.DevicePlan{}, nil, "", "")(context.Background(), nil, nil, &c)
			if err == nil {
				t.Fatal("loosened spec passed verification")
			}
			t.Log(err)
		})
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

func TestVolumesConfined(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	vols := []runtime.VolumeMount{{Name: "ds", HostPath: dir, ContainerPath: "/data"}}
	confined := func(t *testing.T) *specs.Spec {
		s := defaultSpec(t)
		if err := withConfinement()(context.Background(), nil, &containers.Container{}, s); err != nil {
			t.Fatal(err)
		}
		if err := withVolumes(vols)(context.Background(), nil, &containers.Container{}, s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := confined(t)
	i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/data" })
	if i < 0 || s.Mounts[i].Source != dir || !slices.Equal(s.Mounts[i].Options, runtime.VolumeMountOptions) {
		t.Fatalf("mounts %+v", s.Mounts)
	}
	if err := verifyConfined(runtime.DevicePlan{}, vols, "", "")(context.Background(), nil, nil, s); err != nil {
		t.Fatalf("a rental with its volume refused: %v", err)
	}
	// Without the volume attached, the same mount is a host mount.
	if err := verifyConfined(runtime.DevicePlan{}, nil, "", "")(context.Background(), nil, nil, s); err == nil {
		t.Error("a read-write bind mount passed without a volume")
	}
	for name, change := range map[string]func(*specs.Spec){
		"read-only":       func(s *specs.Spec) { s.Mounts[i].Options = append(s.Mounts[i].Options, "ro") },
		"suid":            func(s *specs.Spec) { s.Mounts[i].Options = []string{"rbind", "rw", "nodev"} },
		"another source":  func(s *specs.Spec) { s.Mounts[i].Source = "/etc" },
		"another target":  func(s *specs.Spec) { s.Mounts[i].Destination = "/elsewhere" },
		"mounted twice":   func(s *specs.Spec) { s.Mounts = append(s.Mounts, s.Mounts[i]) },
		"missing":         func(s *specs.Spec) { s.Mounts = slices.Delete(s.Mounts, i, i+1) },
		"a second source": func(s *specs.Spec) { m := s.Mounts[i]; m.Destination = "/x"; s.Mounts = append(s.Mounts, m) },
	} {
		s := confined(t)
		change(s)
		if err := verifyConfined(runtime.DevicePlan{}, vols, "", "")(context.Background(), nil, nil, s); err == nil {
			t.Errorf("%s: passed verification", name)
		}
	}
}
