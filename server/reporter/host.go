package reporter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"time"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime/hostinfo"
)

// HostReport describes this host as the central server needs it to rent it
// out. It is the body of a registration (under "host") and of GET /host.
// Every field is read from the OS, NVML and the container runtime when the
// report is collected; nothing in it comes from the agent's memory.
type HostReport struct {
	AgentID      string      `json:"agent_id"`
	AgentVersion string      `json:"agent_version"`
	Hostname     string      `json:"hostname"`
	OS           OSInfo      `json:"os"`
	CPU          CPUInfo     `json:"cpu"`
	Memory       MemoryInfo  `json:"memory"`
	Disk         DiskInfo    `json:"disk"`
	Runtime      RuntimeInfo `json:"runtime"`
	// CDIAvailable says whether GPUs are injected through CDI specs.
	CDIAvailable bool `json:"cdi_available"`
	// GPUs is the NVML inventory with each GPU's health and holder; empty,
	// never null, on a host without GPUs.
	GPUs []gpu.GPU `json:"gpus"`
	// GPUFreeSets says, for rentals of 1, 2, 4 and 8 GPUs, whether the host
	// can serve one now and how well connected its GPUs would be; empty,
	// never null, on a host without GPUs.
	GPUFreeSets []gpu.BestFree `json:"gpu_free_sets"`
	// GPUTopology is the GPUs' interconnect; absent on a host without GPUs.
	GPUTopology *gpu.Topology `json:"gpu_topology,omitempty"`
	// GPUMock names the mock GPU machine (GPU_MOCK) the GPUs are: a host
	// for integrating against, not for renting out. Absent on real GPUs.
	GPUMock string `json:"gpu_mock,omitempty"`
	// MIGDevices are the MIG devices rented as units (MIG_RENTALS); absent
	// when none.
	MIGDevices []gpu.MIGDevice `json:"mig_devices,omitempty"`
	// DriverVersion is the NVIDIA driver's, e.g. "550.54.15"; CUDAVersion the
	// highest CUDA version it supports, e.g. "12.4". Empty without NVML.
	DriverVersion string `json:"driver_version"`
	CUDAVersion   string `json:"cuda_version"`
	// PublicURL is where the central server reaches this agent's API.
	PublicURL   string    `json:"public_url"`
	CollectedAt time.Time `json:"collected_at"`
	// Warnings name the parts that could not be read (their fields are left
	// zero), so that the server's operators see why a field is empty.
	Warnings []string `json:"warnings,omitempty"`

	// AgentCommit is the source revision the agent was built from; empty
	// for a build that was not given one.
	AgentCommit string `json:"agent_commit,omitempty"`
	// Drain is present while the host is drained: it takes no new rentals.
	Drain *DrainInfo `json:"drain,omitempty"`
	// Resources is what the host allocates to rentals and how much of it
	// they hold.
	Resources *ResourcesInfo `json:"resources,omitempty"`
	// Network is the rentals' network; absent when rentals get none.
	Network *NetworkInfo `json:"network,omitempty"`
	// DiskLimit says how rentals' disk limits are enforced.
	DiskLimit *DiskLimitInfo `json:"disk_limit,omitempty"`
}

// NetworkInfo describes the rentals' network and published ports.
type NetworkInfo struct {
	// Subnet is the rentals' bridge network (RENTAL_SUBNET).
	Subnet string `json:"subnet"`
	Bridge string `json:"bridge"`
	// PortRange is where host ports are taken from (HOST_PORT_RANGE);
	// PortsFree how many of them no rental holds.
	PortRange string `json:"port_range"`
	PortsFree int    `json:"ports_free"`
	// PublicIP is the address tenants are told to reach their ports on;
	// empty when not configured.
	PublicIP string `json:"public_ip,omitempty"`
	// DNS are the resolvers rentals are given: on Docker, Docker's
	// embedded resolver (127.0.0.11), which forwards to the host's.
	DNS []string `json:"dns"`
}

// OSInfo names the operating system, from os-release and the kernel.
type OSInfo struct {
	// Name is os-release's PRETTY_NAME, e.g. "Ubuntu 22.04.4 LTS".
	Name      string `json:"name"`
	ID        string `json:"id"`
	VersionID string `json:"version_id"`
	// Kernel is the kernel release, e.g. "6.8.0-45-generic".
	Kernel string `json:"kernel"`
}

// CPUInfo describes the host's processors as /proc/cpuinfo lists them. The
// counts are the machine's, not this process's cgroup or affinity share,
// since the host is rented as a whole.
type CPUInfo struct {
	Model string `json:"model"`
	// Architecture is Go's name for it (amd64, arm64), which is also how
	// image platforms name it.
	Architecture string `json:"architecture"`
	Sockets      int    `json:"sockets"`
	// Cores counts physical cores, Threads logical CPUs.
	Cores   int  `json:"cores"`
	Threads int  `json:"threads"`
	AVX     bool `json:"avx"`
	AVX2    bool `json:"avx2"`
	AVX512F bool `json:"avx512f"`
}

// MemoryInfo is /proc/meminfo's MemTotal and MemAvailable, in bytes.
type MemoryInfo struct {
	TotalBytes     uint64 `json:"total_bytes"`
	AvailableBytes uint64 `json:"available_bytes"`
}

// DiskInfo is the size of the file system holding the container runtime's
// data, where images and rentals' writable layers go.
type DiskInfo struct {
	// Path is the directory measured: the configured data directory, or its
	// nearest existing parent when it does not exist (yet).
	Path       string `json:"path"`
	TotalBytes uint64 `json:"total_bytes"`
	// FreeBytes is what an unprivileged writer may still use, as df's
	// "Avail" column shows it.
	FreeBytes uint64 `json:"free_bytes"`
}

// RuntimeInfo names the container runtime in use.
type RuntimeInfo struct {
	Name      string `json:"name"`
	Version   string `json:"version"`
	Namespace string `json:"namespace"`
}

// Collect reads the host report afresh. Parts that cannot be read are left
// zero and named in the report's Warnings, and err joins their causes: the
// report is still complete enough to send, so a caller serving it (GET /host)
// or registering with it should log err, not give up. Collect works on a
// standalone (disabled) Reporter too.
func (r *Reporter) Collect(ctx context.Context) (HostReport, error) {
	rep := HostReport{
		AgentID:      r.opts.AgentID,
		AgentVersion: r.opts.Version,
		AgentCommit:  r.opts.Commit,
		PublicURL:    r.opts.PublicURL,
		CollectedAt:  r.opts.Now().UTC(),
		GPUs:         []gpu.GPU{},
		GPUFreeSets:  []gpu.BestFree{},
	}
	var errs []error
	fail := func(what string, err error) {
		err = fmt.Errorf("%s: %w", what, err)
		errs = append(errs, err)
		rep.Warnings = append(rep.Warnings, err.Error())
	}

	if r.opts.Network != nil {
		rep.Network = r.opts.Network()
	}
	if r.opts.DiskLimit != nil {
		rep.DiskLimit = r.opts.DiskLimit()
	}
	var err error
	if rep.Hostname, err = readHostname(r.opts.Root); err != nil {
		fail("hostname", err)
	}
	if rep.OS, err = readOS(r.opts.Root); err != nil {
		fail("os", err)
	}
	if rep.CPU, err = readCPU(r.opts.Root); err != nil {
		fail("cpu", err)
	}
	if rep.Memory, err = readMemory(r.opts.Root); err != nil {
		fail("memory", err)
	}
	if rep.Disk, err = readDisk(r.opts.DataDir); err != nil {
		fail("disk", err)
	}

	infoCtx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	info, err := r.opts.Runtime.Info(infoCtx)
	cancel()
	if err != nil {
		fail("runtime info", err)
	} else {
		rep.Runtime = RuntimeInfo{Name: info.Name, Version: info.Version, Namespace: info.Namespace}
	}

	if rep.Drain, err = r.drainInfo(ctx); err != nil {
		fail("drain state", err)
	}
	rep.Resources = r.resourcesInfo()
	if r.opts.CDI != nil {
		rep.CDIAvailable = r.opts.CDI()
	}
	if r.opts.GPUs != nil {
		if gs := r.opts.GPUs.GPUs(); gs != nil {
			rep.GPUs = gs
		}
		if len(rep.GPUs) > 0 {
			rep.GPUFreeSets = r.opts.GPUs.BestFree()
			topo := r.opts.GPUs.Topology()
			rep.GPUTopology = &topo
		}
		if m, ok := r.opts.GPUs.(interface{ Mock() string }); ok {
			rep.GPUMock = m.Mock()
		}
		if m, ok := r.opts.GPUs.(migLister); ok {
			rep.MIGDevices = m.MIGDevices()
		}
		rep.DriverVersion = r.opts.GPUs.DriverVersion()
		rep.CUDAVersion = r.opts.GPUs.CUDADriverVersion()
	}
	return rep, errors.Join(errs...)
}

// readHostname reads the UTS hostname, which is what os.Hostname returns on
// Linux, through root so that tests can supply it.
func readHostname(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "proc/sys/kernel/hostname"))
	if err != nil {
		if root == "/" {
			return os.Hostname()
		}
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// readOS reads os-release (falling back to /usr/lib/os-release as the
// os-release(5) manual says) and the kernel release.
func readOS(root string) (OSInfo, error) {
	var info OSInfo
	var errs []error
	b, err := os.ReadFile(filepath.Join(root, "etc/os-release"))
	if errors.Is(err, fs.ErrNotExist) {
		b, err = os.ReadFile(filepath.Join(root, "usr/lib/os-release"))
	}
	if err != nil {
		errs = append(errs, err)
	} else {
		kv := parseOSRelease(b)
		info.Name, info.ID, info.VersionID = kv["PRETTY_NAME"], kv["ID"], kv["VERSION_ID"]
		if info.Name == "" {
			info.Name = kv["NAME"]
		}
	}
	k, err := os.ReadFile(filepath.Join(root, "proc/sys/kernel/osrelease"))
	if err != nil {
		errs = append(errs, err)
	} else {
		info.Kernel = strings.TrimSpace(string(k))
	}
	return info, errors.Join(errs...)
}

// parseOSRelease parses os-release's shell-like KEY=value lines.
func parseOSRelease(b []byte) map[string]string {
	kv := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			} else {
				v = v[1 : len(v)-1]
			}
		} else if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = v[1 : len(v)-1]
		}
		kv[k] = v
	}
	return kv
}

// readCPU parses /proc/cpuinfo. When it lists no processors (some
// containers and architectures trim it), Threads falls back to the CPUs Go
// sees.
func readCPU(root string) (CPUInfo, error) {
	info := CPUInfo{Architecture: goruntime.GOARCH}
	b, err := os.ReadFile(filepath.Join(root, "proc/cpuinfo"))
	if err != nil {
		info.Threads, info.Cores = hostinfo.CPUs(), hostinfo.CPUs()
		return info, err
	}
	parseCPUInfo(b, &info)
	if info.Threads == 0 {
		info.Threads = hostinfo.CPUs()
	}
	if info.Cores == 0 {
		info.Cores = info.Threads
	}
	if info.Sockets == 0 && info.Threads > 0 {
		info.Sockets = 1
	}
	return info, nil
}

// parseCPUInfo fills info from cpuinfo's blank-line separated processor
// blocks. x86 names the model in "model name" and the features in "flags";
// arm64 uses "Features" and at best "Model" or "Hardware". Cores are the
// distinct (physical id, core id) pairs, which x86 lists and arm64 does not.
func parseCPUInfo(b []byte, info *CPUInfo) {
	type core struct{ socket, id string }
	cores := map[core]bool{}
	sockets := map[string]bool{}
	var socket, model, fallbackModel, flags string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20) // flags lines are long
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "processor":
			info.Threads++
			socket = ""
		case "physical id":
			socket = v
			sockets[v] = true
		case "core id":
			cores[core{socket, v}] = true
		case "model name":
			if model == "" {
				model = v
			}
		case "Model", "Hardware", "cpu model":
			if fallbackModel == "" {
				fallbackModel = v
			}
		case "flags", "Features":
			if flags == "" {
				flags = v
			}
		}
	}
	if model == "" {
		model = fallbackModel
	}
	info.Model = model
	info.Cores = len(cores)
	info.Sockets = len(sockets)
	for _, f := range strings.Fields(flags) {
		switch f {
		case "avx":
			info.AVX = true
		case "avx2":
			info.AVX2 = true
		case "avx512f":
			info.AVX512F = true
		}
	}
}

// readMemory reads MemTotal and MemAvailable from root's /proc/meminfo.
func readMemory(root string) (MemoryInfo, error) {
	m, err := hostinfo.ReadMemory(filepath.Join(root, "proc/meminfo"))
	return MemoryInfo{TotalBytes: m.TotalBytes, AvailableBytes: m.AvailableBytes}, err
}

// readDisk measures the file system holding dir. A data directory that does
// not exist yet (the runtime has not started, or keeps its data elsewhere)
// is measured at its nearest existing parent, which is where it would be
// created.
func readDisk(dir string) (DiskInfo, error) {
	d, err := hostinfo.ReadDisk(dir)
	return DiskInfo{Path: d.Path, TotalBytes: d.TotalBytes, FreeBytes: d.FreeBytes}, err
}
