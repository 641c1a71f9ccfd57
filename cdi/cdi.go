// Package cdi turns a GPU allocation into devices inside a container through
// CDI (Container Device Interface) spec files. It loads the specs from the
// CDI spec directories, generates the NVIDIA spec with nvidia-container-
// toolkit's nvcdi when the host has none that fits its GPUs and driver, and
// hands the back end a runtime.DevicePlan (Injector.Plan) that injects
// exactly the allocated GPUs, by UUID: only their NVIDIA device nodes and
// read-only driver files, with pinned NVIDIA hooks, checked against the
// host's GPUs and driver. The back end applies the plan last and verifies
// the final spec against it.
//
// It is imported by cmd/, which builds one Injector, generates the spec at
// start-up and hands the Injector to the back end; it never imports server/
// or a back end, and runtime/ does not import it.
//
// Device nodes reach a container only through CDI: the agent never uses the
// legacy nvidia-container-runtime hook, never asks for the "all" device and
// never names a GPU by index, because indexes change across reboots and
// driver reloads while UUIDs do not.
package cdi

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/containerd/errdefs"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/host-agent/host-agent/gpu"
)

// The one device class the agent injects: whole NVIDIA GPUs, named by UUID.
const (
	Vendor = "nvidia.com"
	Class  = "gpu"
	// Kind is the CDI kind of GPU devices; a device's qualified name is
	// Kind + "=" + UUID.
	Kind = Vendor + "/" + Class
)

// DefaultSpecDirs are the CDI spec directories used when CDI_SPEC_DIRS is
// unset: static specs from packages, then generated ones, which take
// precedence when both define a device.
func DefaultSpecDirs() []string {
	return []string{cdilib.DefaultStaticDir, cdilib.DefaultDynamicDir}
}

// DefaultHookPaths are the only programs a CDI spec may run as an OCI hook
// unless Config.AllowedHookPaths says otherwise: the NVIDIA Container
// Toolkit's hook binaries where its packages install them.
func DefaultHookPaths() []string {
	return []string{
		"/usr/bin/nvidia-cdi-hook",
		"/usr/bin/nvidia-ctk",
		"/usr/local/bin/nvidia-cdi-hook",
		"/usr/local/bin/nvidia-ctk",
	}
}

// Config configures an Injector. The zero value means the CDI defaults.
type Config struct {
	// SpecDirs are the CDI spec directories in increasing priority
	// (CDI_SPEC_DIRS); empty means DefaultSpecDirs.
	SpecDirs []string
	// AllowedHookPaths are the absolute paths a spec's hooks may run; empty
	// means DefaultHookPaths.
	AllowedHookPaths []string
	// Logger receives refused specs and generation notes; nil means
	// slog.Default().
	Logger *slog.Logger

	// DeviceMajors are the character majors a spec may hand a container;
	// empty means the NVIDIA driver's (195 and those /proc/devices names
	// nvidia-uvm, nvidia-caps and the like). Block devices never pass.
	DeviceMajors []int64
	// Inventory, when set, is compared with the spec before every
	// injection: each GPU's node must carry the minor number NVML gives
	// it, and the spec must be for the driver NVML reports. A host with
	// GPUs should always set it.
	Inventory Inventory
	// DriverVersionFile is where the loaded kernel module's version is
	// read (default /proc/driver/nvidia/version): a module that no longer
	// matches Inventory's means the driver changed under the agent.
	DriverVersionFile string
	// NVML and Generate, when NVML is set, let an injection that finds the
	// spec stale regenerate it (EnsureNVIDIASpec) and try once more.
	NVML     nvml.Interface
	Generate GenerateOptions
}

// Injector injects allocated GPUs into OCI specs through the CDI specs found
// in its spec directories, and keeps the NVIDIA spec in step with the host's
// GPUs (EnsureNVIDIASpec). It is safe for concurrent use.
type Injector struct {
	cache  specCache
	dirs   []string
	hooks  hookPolicy
	logger *slog.Logger
	majors []int64

	inv        Inventory
	driverFile string
	genLib     nvml.Interface
	genOpts    GenerateOptions

	// mu is held while the cache is refreshed and read (see snapshot).
	mu sync.Mutex
	// crashed names the spec files that made the CDI library panic at the
	// last refresh (see refresh); none is injected while it is not nil.
	crashed []string
	// readState is specsState of the directories the cache holds, empty
	// when the next refresh must read them again.
	readState string
	// clock is the time specsState compares changes with; nil: time.Now.
	clock func() time.Time
	// genMu serialises EnsureNVIDIASpec: two concurrent runs could rename
	// a stale spec over a fresh one.
	genMu sync.Mutex
}

// New builds an Injector over cfg.SpecDirs. It reads the directories once;
// every later injection rereads them, so specs written afterwards (by
// EnsureNVIDIASpec or by the operator) are picked up without a restart.
// Directories that do not exist yet are not an error: a CPU-only host has
// none.
func New(cfg Config) (*Injector, error) {
	dirs := cfg.SpecDirs
	if len(dirs) == 0 {
		dirs = DefaultSpecDirs()
	}
	dirs = cleanPaths(dirs)
	for _, d := range dirs {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("%w: CDI spec directory %q is not absolute", errdefs.ErrInvalidArgument, d)
		}
	}
	hooks, err := newHookPolicy(cfg.AllowedHookPaths)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	// Auto-refresh is off: it would start an fsnotify watcher goroutine
	// that nobody owns, and a spec must not change between the checks
	// SpecOpts makes and the injection. Every use refreshes explicitly.
	// Created on no directory and pointed at dirs by the first refresh:
	// creating it on dirs reads them, outside refresh's recovery.
	cache, _ := cdilib.NewCache(cdilib.WithSpecDirs(filepath.Join(os.TempDir(), "host-agent-no-cdi-specs")), cdilib.WithAutoRefresh(false))
	in := newInjector(cache, dirs, hooks, logger)
	in.mu.Lock()
	in.configure()
	in.mu.Unlock()
	in.majors = slices.Clone(cfg.DeviceMajors)
	if len(in.majors) == 0 {
		in.majors = nvidiaMajors("/proc/devices")
	}
	in.inv = cfg.Inventory
	if inv, ok := in.inv.(*gpu.Inventory); ok && inv == nil {
		in.inv = nil
	}
	in.driverFile = cfg.DriverVersionFile
	if in.driverFile == "" {
		in.driverFile = "/proc/driver/nvidia/version"
	}
	in.genLib, in.genOpts = cfg.NVML, cfg.Generate
	return in, nil
}

func newInjector(cache specCache, dirs []string, hooks hookPolicy, logger *slog.Logger) *Injector {
	return &Injector{cache: cache, dirs: dirs, hooks: hooks, logger: logger.With("component", "cdi")}
}

// SpecDirs are the directories the Injector reads, in increasing priority.
func (in *Injector) SpecDirs() []string { return slices.Clone(in.dirs) }

// Report describes what CDI offers on this host, for the host report.
type Report struct {
	// Available is true when at least one GPU can be injected: a
	// nvidia.com/gpu device resolves and its spec passes the hook policy.
	Available bool `json:"available"`
	// SpecDirs are the directories read, in increasing priority.
	SpecDirs []string `json:"spec_dirs"`
	// SpecFiles are the spec files that loaded, sorted.
	SpecFiles []string `json:"spec_files"`
	// Vendors are the CDI vendors found, e.g. "nvidia.com".
	Vendors []string `json:"vendors"`
	// GPUDevices are the injectable devices, e.g. "nvidia.com/gpu=GPU-…", sorted.
	GPUDevices []string `json:"gpu_devices"`
	// Problems are spec files that failed to load, conflicting devices and
	// hooks refused by the policy.
	Problems []string `json:"problems,omitempty"`
}

// Report rereads the spec directories and describes what they offer.
func (in *Injector) Report() Report {
	var r Report
	in.snapshot(func() { r = in.report() })
	return r
}

func (in *Injector) report() Report {
	r := Report{SpecDirs: in.SpecDirs(), SpecFiles: []string{}, Vendors: []string{}, GPUDevices: []string{}}
	for _, vendor := range in.cache.ListVendors() {
		r.Vendors = append(r.Vendors, vendor)
		for _, spec := range in.cache.GetVendorSpecs(vendor) {
			r.SpecFiles = append(r.SpecFiles, spec.GetPath())
		}
	}
	slices.Sort(r.SpecFiles)
	r.Problems = in.loadProblems()
	for _, dev := range in.gpuDevices() {
		problems := in.hooks.deviceProblems(dev)
		spec := dev.GetSpec()
		problems = append(problems, in.editsPolicyProblems(&spec.ContainerEdits, fmt.Sprintf("CDI spec %s: spec-level edits", specLabel(spec)))...)
		problems = append(problems, in.editsPolicyProblems(&dev.ContainerEdits, fmt.Sprintf("CDI spec %s: device %s", specLabel(spec), dev.GetQualifiedName()))...)
		if len(problems) > 0 {
			r.Problems = append(r.Problems, problems...)
			continue
		}
		r.GPUDevices = append(r.GPUDevices, dev.GetQualifiedName())
	}
	slices.Sort(r.GPUDevices)
	r.Problems = slices.Compact(slices.Sorted(slices.Values(r.Problems)))
	r.Available = len(r.GPUDevices) > 0
	return r
}

// Available reports whether at least one GPU can be injected through CDI.
func (in *Injector) Available() bool { return in.Report().Available }

func cleanPaths(paths []string) []string {
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		out = append(out, filepath.Clean(p))
	}
	return out
}
