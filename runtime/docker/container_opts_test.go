package docker

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
)

func TestContainerConfigConfinesAndLimits(t *testing.T) {
	t.Parallel()
	spec := runtime.InstanceSpec{
		ID: "web-1", Entrypoint: []string{"/bin/sh"},
		Env:       map[string]string{"A": "1", "NVIDIA_VISIBLE_DEVICES": "all"},
		Resources: runtime.Resources{CPUs: 1.5, MemoryMB: 512, Pids: 100, ShmMB: 128},
	}
	cfg, host := containerConfig("img", spec, map[string]string{runtime.LabelInstanceID: "web-1"}, gpuPlan{}, 100<<20)
	if cfg.Hostname != "web-1" || !slices.Equal(cfg.Entrypoint, []string{"/bin/sh"}) || cfg.Cmd == nil || len(cfg.Cmd) != 0 {
		t.Errorf("config %+v: an entrypoint drops the image's CMD", cfg)
	}
	if !slices.Contains(cfg.Env, "NVIDIA_VISIBLE_DEVICES=void") || slices.Contains(cfg.Env, "NVIDIA_VISIBLE_DEVICES=all") {
		t.Errorf("env %v: NVIDIA_VISIBLE_DEVICES must be void", cfg.Env)
	}
	if host.NanoCPUs != 1.5e9 || host.Memory != 512<<20 || host.MemorySwap != host.Memory || *host.PidsLimit != 100 || host.ShmSize != 128<<20 {
		t.Errorf("limits %+v", host.Resources)
	}
	if host.Privileged || host.Runtime != "runc" || host.NetworkMode != "none" || !slices.Contains(host.SecurityOpt, "no-new-privileges") {
		t.Errorf("host config not confined: %+v", host)
	}
	if err := verifyConfined(container.InspectResponse{HostConfig: host}, gpuPlan{}, keysPlan{}, nil); err != nil {
		t.Errorf("the agent's own config refused: %v", err)
	}
	if !slices.Equal(host.CapDrop, []string{"NET_RAW"}) || host.Sysctls["net.ipv4.ping_group_range"] != "0 2147483647" {
		t.Errorf("cap drop %v, sysctls %v: want NET_RAW dropped and ICMP sockets for every group", host.CapDrop, host.Sysctls)
	}
}

func TestGPUPlanIsByUUIDOnly(t *testing.T) {
	t.Parallel()
	uuids := []string{"GPU-a", "GPU-b"}
	cdi := planFor(uuids, true)
	if cdi.Request.Driver != DriverCDI || !slices.Equal(cdi.Request.DeviceIDs, []string{"nvidia.com/gpu=GPU-a", "nvidia.com/gpu=GPU-b"}) || cdi.Request.Count != 0 {
		t.Errorf("CDI request %+v", cdi.Request)
	}
	nv := planFor(uuids, false)
	if nv.Request.Driver != DriverNVIDIA || !slices.Equal(nv.Request.DeviceIDs, uuids) || nv.Request.Count != 0 {
		t.Errorf("nvidia request %+v", nv.Request)
	}
	cfg, _ := containerConfig("img", runtime.InstanceSpec{ID: "g"}, nil, nv, 0)
	if !slices.Contains(cfg.Env, "NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b") {
		t.Errorf("env %v: the hook's variable must name exactly the UUIDs", cfg.Env)
	}
}

func TestVerifyConfinedRefuses(t *testing.T) {
	t.Parallel()
	plan := planFor([]string{"GPU-a"}, true)
	good := func() *container.HostConfig {
		_, h := containerConfig("img", runtime.InstanceSpec{ID: "x"}, nil, plan, 0)
		return h
	}
	for _, tc := range []struct {
		name, want string
		mutate     func(*container.HostConfig)
	}{
		{"privileged", "privileged", func(h *container.HostConfig) { h.Privileged = true }},
		{"new privileges", "no_new_privileges", func(h *container.HostConfig) { h.SecurityOpt = nil }},
		{"seccomp off", "unconfined", func(h *container.HostConfig) { h.SecurityOpt = append(h.SecurityOpt, "seccomp=unconfined") }},
		{"cap added", "capabilities", func(h *container.HostConfig) { h.CapAdd = []string{"SYS_ADMIN"} }},
		{"host mount", "host mounts", func(h *container.HostConfig) { h.Binds = []string{"/:/host"} }},
		{"host device", "host devices", func(h *container.HostConfig) {
			h.Devices = []container.DeviceMapping{{PathOnHost: "/dev/nvidia1"}}
		}},
		{"other runtime", "runtime", func(h *container.HostConfig) { h.Runtime = "nvidia" }},
		{"host pid", "host namespace", func(h *container.HostConfig) { h.PidMode = "host" }},
		{"another GPU", "device request", func(h *container.HostConfig) { h.DeviceRequests[0].DeviceIDs = []string{"nvidia.com/gpu=GPU-b"} }},
		{"all GPUs", "device request", func(h *container.HostConfig) {
			h.DeviceRequests[0] = container.DeviceRequest{Driver: DriverNVIDIA, Count: -1}
		}},
		{"no GPU", "device requests", func(h *container.HostConfig) { h.DeviceRequests = nil }},
		{"net_raw kept", "CAP_NET_RAW not dropped", func(h *container.HostConfig) { h.CapDrop = nil }},
		{"a sysctl", "sysctls not allowed: kernel.msgmax", func(h *container.HostConfig) {
			h.Sysctls = maps.Clone(h.Sysctls)
			h.Sysctls["kernel.msgmax"] = "1"
		}},
		{"IPv6 on", "sysctls not allowed: net.ipv6.conf.all.disable_ipv6=0", func(h *container.HostConfig) {
			h.Sysctls = maps.Clone(h.Sysctls)
			h.Sysctls["net.ipv6.conf.all.disable_ipv6"] = "0"
		}},
		{"host cgroup namespace", "host namespace", func(h *container.HostConfig) { h.CgroupnsMode = "host" }},
		{"host user namespace", "host namespace", func(h *container.HostConfig) { h.UsernsMode = "host" }},
		{"working directory in /proc", "working directory \"/proc/self/fd/7\" is under /proc", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := good()
			cfg := &container.Config{WorkingDir: "/workspace"}
			if tc.mutate != nil {
				tc.mutate(h)
			} else {
				cfg.WorkingDir = "/proc/self/fd/7"
			}
			err := verifyConfined(container.InspectResponse{HostConfig: h, Config: cfg}, plan, keysPlan{}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("verify: %v, want a refusal naming %q", err, tc.want)
			}
		})
	}
	// A CPU rental with a device request is refused too.
	h := good()
	if err := verifyConfined(container.InspectResponse{HostConfig: h}, gpuPlan{}, keysPlan{}, nil); err == nil {
		t.Fatal("a CPU rental with a GPU device request was accepted")
	}
}

// The SSH keys file is the one host mount allowed, read-only, from where
// the agent wrote it, at its targets, and only when the instance has keys.
func TestVerifyConfinedAllowsOnlyTheKeysFile(t *testing.T) {
	t.Parallel()
	const path = "/var/lib/host-agent/docker/files/x/authorized_keys"
	const userKeys = "/home/jovyan/.ssh/authorized_keys"
	keys := keysPlan{Path: path, Targets: []string{backend.AuthorizedKeysPath, userKeys}}
	withKeys := func() container.InspectResponse {
		_, h := containerConfig("img", runtime.InstanceSpec{ID: "x"}, nil, gpuPlan{}, 0)
		withAuthorizedKeys(h, keys)
		return container.InspectResponse{HostConfig: h, Mounts: []container.MountPoint{
			{Type: mount.TypeBind, Source: path, Destination: backend.AuthorizedKeysPath, RW: false},
			{Type: mount.TypeBind, Source: path, Destination: userKeys, RW: false},
		}}
	}
	if err := verifyConfined(withKeys(), gpuPlan{}, keys, nil); err != nil {
		t.Fatalf("the keys mounts refused: %v", err)
	}
	for _, tc := range []struct {
		name   string
		keys   keysPlan
		mutate func(*container.InspectResponse)
	}{
		{"no keys expected", keysPlan{}, func(*container.InspectResponse) {}},
		{"writable", keys, func(c *container.InspectResponse) { c.HostConfig.Mounts[0].ReadOnly = false }},
		{"writable as run", keys, func(c *container.InspectResponse) { c.Mounts[1].RW = true }},
		{"another source", keys, func(c *container.InspectResponse) { c.Mounts[0].Source = "/etc/shadow" }},
		{"another target", keys, func(c *container.InspectResponse) { c.HostConfig.Mounts[1].Target = "/etc/passwd" }},
		{"a target twice", keys, func(c *container.InspectResponse) { c.HostConfig.Mounts[1].Target = backend.AuthorizedKeysPath }},
		{"a second mount", keys, func(c *container.InspectResponse) {
			c.HostConfig.Mounts = append(c.HostConfig.Mounts, mount.Mount{Type: mount.TypeBind, Source: "/", Target: "/host"})
		}},
		{"a mount the daemon added", keys, func(c *container.InspectResponse) {
			c.Mounts = append(c.Mounts, container.MountPoint{Type: mount.TypeBind, Source: "/", Destination: "/host"})
		}},
		{"binds besides", keys, func(c *container.InspectResponse) { c.HostConfig.Binds = []string{"/:/host"} }},
	} {
		c := withKeys()
		tc.mutate(&c)
		if err := verifyConfined(c, gpuPlan{}, tc.keys, nil); err == nil || !strings.Contains(err.Error(), "host mounts") {
			t.Errorf("%s: %v, want a refusal naming host mounts", tc.name, err)
		}
	}
}

// Limits the Lifecycle filled in are applied, with a pids limit always,
// and ulimits go to the daemon soft and hard alike.
func TestContainerConfigEnforcedLimits(t *testing.T) {
	t.Parallel()
	spec := runtime.InstanceSpec{ID: "share", Limits: runtime.Resources{CPUs: 2, MemoryMB: 1000, ShmMB: 500, CPUSetCPUs: "0-3", CPUSetMems: "0"}}
	_, host := containerConfig("img", spec, nil, gpuPlan{}, 0)
	if host.NanoCPUs != 2e9 || host.Memory != 1000<<20 || host.ShmSize != 500<<20 || host.PidsLimit == nil || *host.PidsLimit != runtime.DefaultPids ||
		host.CpusetCpus != "0-3" || host.CpusetMems != "0" {
		t.Errorf("limits %+v", host.Resources)
	}
	spec = runtime.InstanceSpec{ID: "gpu", GPUs: []runtime.GPU{{UUID: "GPU-a"}}, Ulimits: map[string]int64{"nofile": 4096}}
	got := dockerUlimits(spec.UlimitsFor(true))
	if len(got) != 2 || got[0].Name != "memlock" || got[0].Soft != -1 || got[0].Hard != -1 || got[1].Name != "nofile" || got[1].Soft != 4096 || got[1].Hard != 4096 {
		t.Errorf("ulimits %+v %+v", got[0], got[1])
	}
	if got := dockerUlimits(spec.UlimitsFor(false)); len(got) != 1 || got[0].Name != "nofile" {
		t.Errorf("without CAP_SYS_RESOURCE: %v, want only nofile", got)
	}
}

func TestVolumesConfined(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	vols := []runtime.VolumeMount{{Name: "ds", HostPath: dir, ContainerPath: "/data"}}
	withVolume := func() container.InspectResponse {
		_, h := containerConfig("img", runtime.InstanceSpec{ID: "x"}, nil, gpuPlan{}, 0)
		withVolumes(h, vols)
		return container.InspectResponse{HostConfig: h, Mounts: []container.MountPoint{
			{Type: mount.TypeBind, Source: dir, Destination: "/data", RW: true},
		}}
	}
	c := withVolume()
	if len(c.HostConfig.Mounts) != 1 || c.HostConfig.Mounts[0].ReadOnly || c.HostConfig.Mounts[0].Source != dir {
		t.Fatalf("mounts %+v", c.HostConfig.Mounts)
	}
	if err := verifyConfined(c, gpuPlan{}, keysPlan{}, vols); err != nil {
		t.Fatalf("a rental with its volume refused: %v", err)
	}
	for name, tc := range map[string]struct {
		vols   []runtime.VolumeMount
		mutate func(*container.InspectResponse)
	}{
		"no volume attached": {nil, func(*container.InspectResponse) {}},
		"read-only":          {vols, func(c *container.InspectResponse) { c.Mounts[0].RW = false }},
		"another source":     {vols, func(c *container.InspectResponse) { c.HostConfig.Mounts[0].Source = "/etc" }},
		"another target":     {vols, func(c *container.InspectResponse) { c.Mounts[0].Destination = "/elsewhere" }},
		"a second mount": {vols, func(c *container.InspectResponse) {
			c.Mounts = append(c.Mounts, container.MountPoint{Type: mount.TypeBind, Source: dir, Destination: "/data"})
		}},
	} {
		c := withVolume()
		tc.mutate(&c)
		if err := verifyConfined(c, gpuPlan{}, keysPlan{}, tc.vols); err == nil || !strings.Contains(err.Error(), "host mounts") {
			t.Errorf("%s: %v, want a refusal naming host mounts", name, err)
		}
	}
}
