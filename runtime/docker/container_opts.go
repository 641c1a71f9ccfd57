package docker

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
)

// GPU device drivers of the Docker Engine API.
const (
	// DriverCDI injects CDI devices by fully qualified name (dockerd with
	// CDI spec dirs: Docker 25 and later with CDI on).
	DriverCDI = "cdi"
	// DriverNVIDIA hands explicit GPU UUIDs to the NVIDIA Container
	// Toolkit's hook (what `docker run --gpus device=UUID` sends).
	DriverNVIDIA = "nvidia"
	// CDIKind is the CDI kind of NVIDIA GPUs, named by UUID.
	CDIKind = "nvidia.com/gpu"
)

const visibleDevicesEnv = "NVIDIA_VISIBLE_DEVICES"

// gpuPlan is how an instance's GPUs are asked of the daemon: one device
// request naming exactly the reserved UUIDs, never a count or "all".
type gpuPlan struct {
	UUIDs   []string
	Request *container.DeviceRequest
}

// gpuRequest builds the device request for the reserved GPUs, by CDI
// only, from specs the agent has checked (checkCDI). A daemon without CDI
// (dockerd before 25, or with the cdi feature off) would hand the GPUs to
// NVIDIA's hook, which mounts what the agent cannot see or check (the
// persistenced socket among it): GPU rentals are refused there.
func (r *Runtime) gpuRequest(ctx context.Context, gpus []runtime.GPU) (gpuPlan, error) {
	if len(gpus) == 0 {
		return gpuPlan{}, nil
	}
	uuids := make([]string, len(gpus))
	for i, g := range gpus {
		if g.UUID == "" || strings.ContainsAny(g.UUID, ",= ") {
			return gpuPlan{}, fmt.Errorf("GPU UUID %q: %w", g.UUID, errdefs.ErrInvalidArgument)
		}
		uuids[i] = g.UUID
	}
	info, err := r.client.Info(ctx, client.InfoOptions{})
	if err != nil {
		return gpuPlan{}, fmt.Errorf("ask the daemon how it injects devices: %w", convertErr(err))
	}
	if err := r.checkCDI(info.Info.CDISpecDirs, info.Info.ServerVersion, uuids); err != nil {
		return gpuPlan{}, err
	}
	return planFor(uuids, true), nil
}

// checkCDI refuses GPUs unless the daemon injects them by CDI from the
// agent's own spec directories, and the plan for uuids passes the agent's
// policy (the containerd back end's: no sockets, no unchecked hooks, no
// other GPU's nodes, ...).
func (r *Runtime) checkCDI(daemonDirs []string, version string, uuids []string) error {
	if len(daemonDirs) == 0 {
		return fmt.Errorf("dockerd %s has no CDI: it would hand the GPUs to NVIDIA's hook, whose mounts the agent cannot check; "+
			"turn CDI on (Docker 25 or later, daemon.json \"features\": {\"cdi\": true}) with \"cdi-spec-dirs\" set to the agent's CDI_SPEC_DIRS, "+
			"or run the agent on containerd: %w", version, errdefs.ErrFailedPrecondition)
	}
	if r.opts.Devices == nil {
		return fmt.Errorf("this agent checks no CDI specs, so it injects no GPU: %w", errdefs.ErrFailedPrecondition)
	}
	checked := r.opts.Devices.SpecDirs()
	var unchecked []string
	for _, d := range daemonDirs {
		if !slices.Contains(checked, filepath.Clean(d)) {
			unchecked = append(unchecked, d)
		}
	}
	if len(unchecked) > 0 {
		return fmt.Errorf("dockerd reads CDI specs from %s, which the agent does not check (CDI_SPEC_DIRS is %s): "+
			"set dockerd's \"cdi-spec-dirs\" to the agent's directories, or the agent's CDI_SPEC_DIRS to the daemon's: %w",
			strings.Join(unchecked, ", "), strings.Join(checked, ","), errdefs.ErrFailedPrecondition)
	}
	if _, err := r.opts.Devices.Plan(uuids); err != nil {
		return fmt.Errorf("the CDI specs dockerd would inject from: %w", err)
	}
	return nil
}

func planFor(uuids []string, cdi bool) gpuPlan {
	if cdi {
		ids := make([]string, len(uuids))
		for i, u := range uuids {
			ids[i] = CDIKind + "=" + u
		}
		return gpuPlan{UUIDs: uuids, Request: &container.DeviceRequest{Driver: DriverCDI, DeviceIDs: ids}}
	}
	return gpuPlan{UUIDs: uuids, Request: &container.DeviceRequest{
		Driver: DriverNVIDIA, DeviceIDs: slices.Clone(uuids), Capabilities: [][]string{{"gpu"}},
	}}
}

// containerConfig is the container as the agent creates it: the request's
// image, command, environment and limits, the labels, and the confinement
// every tenant gets whatever it asks for. Networking is none (its own
// network namespace with loopback only) unless the runtime has a network,
// which applyNetwork then puts it on.
func containerConfig(ref string, spec runtime.InstanceSpec, labels map[string]string, gpus gpuPlan, logMax int64) (*container.Config, *container.HostConfig) {
	env := map[string]string{}
	for k, v := range spec.Env {
		env[k] = v
	}
	// What the image or the request says of NVIDIA_VISIBLE_DEVICES
	// changes nothing: a host whose default runtime is NVIDIA's would
	// otherwise hand an image asking for "all" every GPU. With the nvidia
	// driver the daemon adds the same UUIDs for the hook.
	env[visibleDevicesEnv] = "void"
	if gpus.Request != nil && gpus.Request.Driver == DriverNVIDIA {
		env[visibleDevicesEnv] = strings.Join(gpus.UUIDs, ",")
	}
	cfg := &container.Config{
		Image:    ref,
		Hostname: spec.ID,
		Env:      backend.EnvList(env),
		Labels:   labels,
		Cmd:      spec.Command,
	}
	if len(spec.Entrypoint) > 0 {
		// As docker run --entrypoint: the image's CMD is dropped.
		cfg.Entrypoint = spec.Entrypoint
		if cfg.Cmd == nil {
			cfg.Cmd = []string{}
		}
	}
	host := &container.HostConfig{
		NetworkMode: "none",
		Runtime:     "runc",
		Privileged:  false,
		SecurityOpt: []string{"no-new-privileges"},
		// The confinement both back ends share (runtime/backend/confine.go): the
		// daemon's default capabilities but CAP_NET_RAW, ICMP sockets and
		// IPv6 off inside.
		CapDrop: dockerCapNames(backend.DroppedCapabilities),
		// A cgroup namespace of its own, as on containerd, whatever the
		// daemon's default (host on cgroup v1).
		CgroupnsMode:  container.CgroupnsModePrivate,
		Sysctls:       backend.RentalSysctls(),
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
		LogConfig: container.LogConfig{Type: "json-file", Config: map[string]string{
			"max-size": strconv.FormatInt(max(logMax/2, 1<<20), 10),
			"max-file": "2",
		}},
	}
	res := spec.Enforced()
	if res.CPUs > 0 {
		host.NanoCPUs = int64(res.CPUs * 1e9)
	}
	host.CpusetCpus, host.CpusetMems = res.CPUSetCPUs, res.CPUSetMems
	if res.MemoryMB > 0 {
		host.Memory = res.MemoryMB << 20
		// Swap equal to the limit means no swap on top of it.
		host.MemorySwap = host.Memory
	}
	if res.Pids > 0 {
		p := res.Pids
		host.PidsLimit = &p
	}
	if res.ShmMB > 0 {
		host.ShmSize = res.ShmMB << 20
	}
	if gpus.Request != nil {
		host.DeviceRequests = []container.DeviceRequest{*gpus.Request}
	}
	return cfg, host
}

// dockerCapNames are capabilities as the Engine API takes them, without
// the CAP_ prefix (which dockerd 20.10 does not accept everywhere).
func dockerCapNames(caps []string) []string {
	out := make([]string, len(caps))
	for i, c := range caps {
		out[i] = strings.TrimPrefix(c, "CAP_")
	}
	return out
}

// dockerUlimits are process limits as the Engine API takes them, soft and
// hard alike, sorted by name; -1 is unlimited.
func dockerUlimits(limits map[string]int64) []*container.Ulimit {
	out := make([]*container.Ulimit, 0, len(limits))
	for name, v := range limits {
		out = append(out, &container.Ulimit{Name: name, Soft: v, Hard: v})
	}
	slices.SortFunc(out, func(a, b *container.Ulimit) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// keysPlan is where an instance's SSH keys file was written (Path) and
// where it is mounted read-only (Targets): the only host mounts
// verifyConfined allows. The zero plan: no keys.
type keysPlan struct {
	Path    string
	Targets []string
}

// withAuthorizedKeys mounts the keys file at each of its targets,
// read-only.
func withAuthorizedKeys(host *container.HostConfig, keys keysPlan) {
	for _, target := range keys.Targets {
		host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeBind, Source: keys.Path, Target: target, ReadOnly: true})
	}
}

// withVolumes bind-mounts the rental's volumes read-write. The volumes'
// own mounts on the host are nosuid and nodev, which their bind mounts
// keep.
func withVolumes(host *container.HostConfig, vols []runtime.VolumeMount) {
	for _, v := range vols {
		host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeBind, Source: v.HostPath, Target: v.ContainerPath})
	}
}

// verifyConfined refuses a created container that the daemon would run
// with more than the defaults and exactly the reserved GPUs: privileged,
// with new privileges allowed, seccomp off, added capabilities or those of
// backend.DroppedCapabilities kept, sysctls other than the rental's, a
// working directory under /proc (the image's WORKDIR included), host
// namespaces, host mounts (but the SSH keys file of keys, read-only, at its
// targets, and the volumes vols, read-write, at theirs) or devices, another runtime or other device requests. The
// policy is the containerd back end's (runtime/backend/confine.go).
func verifyConfined(c container.InspectResponse, gpus gpuPlan, keys keysPlan, vols []runtime.VolumeMount) error {
	h := c.HostConfig
	if h == nil {
		return fmt.Errorf("the daemon reports no host config for %s: %w", c.Name, errdefs.ErrFailedPrecondition)
	}
	var problems []string
	if h.Privileged {
		problems = append(problems, "privileged")
	}
	if !slices.ContainsFunc(h.SecurityOpt, func(o string) bool {
		return o == "no-new-privileges" || o == "no-new-privileges:true" || o == "no-new-privileges=true"
	}) {
		problems = append(problems, "no_new_privileges is off")
	}
	for _, o := range h.SecurityOpt {
		if strings.Contains(o, "unconfined") {
			problems = append(problems, "security option "+o)
		}
	}
	if len(h.CapAdd) > 0 {
		problems = append(problems, "capabilities added: "+strings.Join(h.CapAdd, ","))
	}
	for _, c := range backend.DroppedCapabilities {
		if !slices.ContainsFunc(h.CapDrop, func(d string) bool {
			d = strings.ToUpper(d)
			return d == "ALL" || d == c || "CAP_"+d == c
		}) {
			problems = append(problems, c+" not dropped")
		}
	}
	if p := backend.SysctlProblem(h.Sysctls); p != "" {
		problems = append(problems, p)
	}
	if c.Config != nil {
		if p := backend.WorkingDirProblem(c.Config.WorkingDir); p != "" {
			problems = append(problems, p)
		}
	}
	if err := verifyMounts(c, keys, vols); err != nil {
		problems = append(problems, err.Error())
	}
	if len(h.Devices) > 0 || len(h.DeviceCgroupRules) > 0 {
		problems = append(problems, "host devices")
	}
	if h.Runtime != "runc" {
		problems = append(problems, "runtime "+h.Runtime)
	}
	if h.PidMode.IsHost() || h.IpcMode.IsHost() || h.UTSMode.IsHost() || h.NetworkMode.IsHost() || h.UsernsMode.IsHost() || h.CgroupnsMode.IsHost() {
		problems = append(problems, "a host namespace")
	}
	if err := verifyDevices(h.DeviceRequests, gpus); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("refusing unconfined container: %s: %w", strings.Join(problems, "; "), errdefs.ErrFailedPrecondition)
	}
	return nil
}

// verifyMounts allows no mount but the SSH keys file, read-only, at its
// targets, and each volume, read-write, at its path, each once.
func verifyMounts(c container.InspectResponse, keys keysPlan, vols []runtime.VolumeMount) error {
	h := c.HostConfig
	ok := func(typ mount.Type, source, target string, ro bool) bool {
		if typ != mount.TypeBind {
			return false
		}
		if slices.ContainsFunc(vols, func(v runtime.VolumeMount) bool { return v.HostPath == source && v.ContainerPath == target }) {
			return !ro && runtime.VolumeSourceProblem(source) == ""
		}
		return keys.Path != "" && source == keys.Path && ro && slices.Contains(keys.Targets, target)
	}
	seen := map[string]bool{}
	for _, m := range h.Mounts {
		if !ok(m.Type, m.Source, m.Target, m.ReadOnly) || seen[m.Target] {
			return fmt.Errorf("host mounts")
		}
		seen[m.Target] = true
	}
	if len(h.Binds) > 0 || len(c.Mounts) > len(keys.Targets)+len(vols) {
		return fmt.Errorf("host mounts")
	}
	for _, m := range c.Mounts {
		if !ok(m.Type, m.Source, m.Destination, !m.RW) {
			return fmt.Errorf("host mounts")
		}
	}
	return nil
}

// verifyDevices checks that the container's device requests are exactly
// the plan's: none for a CPU rental; one, of the plan's driver, naming
// exactly the reserved UUIDs, with no count, for a GPU rental.
func verifyDevices(got []container.DeviceRequest, gpus gpuPlan) error {
	if gpus.Request == nil {
		if len(got) > 0 {
			return fmt.Errorf("devices requested for a rental without GPUs: %v", got)
		}
		return nil
	}
	want := *gpus.Request
	if len(got) != 1 {
		return fmt.Errorf("%d device requests, want 1", len(got))
	}
	g := got[0]
	a, b := slices.Clone(g.DeviceIDs), slices.Clone(want.DeviceIDs)
	slices.Sort(a)
	slices.Sort(b)
	if g.Driver != want.Driver || g.Count != 0 || !slices.Equal(a, b) {
		return fmt.Errorf("device request %s %v (count %d), want %s %v", g.Driver, g.DeviceIDs, g.Count, want.Driver, want.DeviceIDs)
	}
	return nil
}
