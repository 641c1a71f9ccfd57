package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errhttp"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/events/gpuevents"
)

// check holds what one stage hands the next.
type check struct {
	cfg config
	lib nvml.Interface
	// nvmlErr is why there is no lib: no NVML under the driver root.
	nvmlErr error
	inv     *gpu.Inventory
	alloc   *gpu.Allocator
	cdi     *cdi.Injector
	target  gpu.GPU // the GPU the allocation and container stages use
	specOK  bool
}

// GPUReport is stage 1's view of one GPU: the inventory's description,
// its sampled temperature, and the ECC mode, which the inventory does not
// keep and is read from NVML directly.
type GPUReport struct {
	gpu.GPU
	TemperatureC   int    `json:"temperature_c"`
	ECCMode        string `json:"ecc_mode"`
	ECCModePending string `json:"ecc_mode_pending,omitempty"`
}

// stageNVML opens NVML through the agent's inventory and describes every GPU.
func (c *check) stageNVML(_ context.Context, out io.Writer) (any, error) {
	if c.nvmlErr != nil {
		return nil, c.nvmlErr
	}
	inv, err := gpu.Open(c.lib, c.cfg.logger)
	if err != nil {
		return nil, fmt.Errorf("open NVML (%s): %w", c.cfg.nvmlPath, err)
	}
	if !inv.Available() {
		return nil, fmt.Errorf("NVML library not loaded from %s", c.cfg.nvmlPath)
	}
	c.inv = inv
	usage := map[string]gpu.Usage{}
	for _, u := range inv.Usages() {
		usage[u.UUID] = u
	}
	gpus := []GPUReport{}
	for _, g := range inv.GPUs() {
		r := GPUReport{GPU: g, TemperatureC: usage[g.UUID].TemperatureC, ECCMode: "unknown"}
		if dev, ret := c.lib.DeviceGetHandleByUUID(g.UUID); ret == nvml.SUCCESS {
			r.ECCMode, r.ECCModePending = eccMode(dev)
		}
		gpus = append(gpus, r)
	}
	details := map[string]any{"driver_version": inv.DriverVersion(), "cuda_version": inv.CUDADriverVersion(), "gpus": gpus}
	fmt.Fprintf(out, "driver %s, CUDA %s, %d GPU(s)\n", inv.DriverVersion(), inv.CUDADriverVersion(), len(gpus))
	for _, g := range gpus {
		fmt.Fprintf(out, "  GPU %d %s %s\n    %d MiB, PCI %s minor %d, PCIe gen %d/%d width x%d/x%d, MIG %s, ECC %s, power limit %d W, %d °C, healthy %v%s\n",
			g.Index, g.UUID, g.Name, g.MemoryTotalMiB, g.PCIBusID, g.MinorNumber,
			g.PCIeGenCurrent, g.PCIeGenMax, g.PCIeWidthCurrent, g.PCIeWidthMax,
			g.MIGMode, g.ECCMode, g.PowerLimitWatts, g.TemperatureC, g.Healthy, reasonSuffix(g.UnhealthyReason))
	}
	switch {
	case inv.Len() == 0:
		return details, errors.New("NVML reports no GPU")
	case inv.DriverVersion() == "":
		return details, errors.New("NVML reports no driver version")
	}
	return details, nil
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return " (" + r + ")"
}

// eccMode reads the current and pending ECC mode; "n/a" where the GPU has
// no ECC.
func eccMode(dev nvml.Device) (current, pending string) {
	defer func() {
		if recover() != nil {
			current, pending = "unknown", ""
		}
	}()
	cur, pend, ret := dev.GetEccMode()
	switch ret {
	case nvml.SUCCESS:
	case nvml.ERROR_NOT_SUPPORTED:
		return "n/a", ""
	default:
		return "unknown (" + ret.Error() + ")", ""
	}
	name := func(s nvml.EnableState) string {
		if s == nvml.FEATURE_ENABLED {
			return "enabled"
		}
		return "disabled"
	}
	current = name(cur)
	if pend != cur {
		pending = name(pend)
	}
	return current, pending
}

// stageCDI generates the NVIDIA spec with nvcdi for the driver root, loads
// it through the agent's injector (CDI library validation, hook policy)
// and injects one GPU into a default container spec, which runs the
// agent's verification of the result.
func (c *check) stageCDI(ctx context.Context, out io.Writer) (any, error) {
	if c.inv == nil {
		return nil, skipped("needs the NVML inventory (stage 1)")
	}
	target, ok := c.pickGPU()
	if !ok {
		return nil, errors.New("no healthy GPU without MIG to inject")
	}
	c.target = target
	specDir := filepath.Join(c.cfg.work, "cdi")
	if err := os.MkdirAll(specDir, 0o755); err != nil {
		return nil, err
	}
	var majors []int64
	if c.cfg.mock {
		// The fake driver root's nodes: this host's /proc/devices lists no
		// NVIDIA driver, so the policy is told the mock's majors.
		majors = []int64{nvidiaMajor, 510}
	}
	injector, err := cdi.New(cdi.Config{
		SpecDirs:         []string{specDir},
		DeviceMajors:     majors,
		AllowedHookPaths: append(cdi.DefaultHookPaths(), c.cfg.hookPath),
		Logger:           c.cfg.logger,
	})
	if err != nil {
		return nil, err
	}
	opts := cdi.GenerateOptions{
		OutDir: specDir, DriverRoot: c.cfg.driverRoot, DevRoot: c.cfg.devRoot,
		HookPath: c.cfg.hookPath, LdconfigPath: c.cfg.ldconfigPath,
	}
	fmt.Fprintf(out, "nvcdi: driver root %s, dev root %s, hook %s, ldconfig %s\n",
		opts.DriverRoot, opts.DevRoot, opts.HookPath, orDefault(opts.LdconfigPath, "/sbin/ldconfig (the hook's default)"))
	if _, err := injector.EnsureNVIDIASpec(ctx, c.inv, c.lib, opts); err != nil {
		return nil, fmt.Errorf("generate CDI spec: %w", err)
	}
	c.cdi = injector
	path := filepath.Join(specDir, cdi.GeneratedSpecFile)
	spec, err := cdilib.ReadSpec(path, 0)
	if err != nil {
		return nil, fmt.Errorf("CDI library refuses %s: %w", path, err)
	}
	report := injector.Report()
	details := map[string]any{"spec_file": path, "cdi_version": spec.Version, "devices": report.GPUDevices, "problems": report.Problems}
	fmt.Fprintf(out, "spec %s (CDI %s) valid; devices:\n", path, spec.Version)
	for _, d := range report.GPUDevices {
		fmt.Fprintln(out, "  "+d)
	}
	for _, p := range report.Problems {
		fmt.Fprintln(out, "  problem:", p)
	}
	if !report.Available || !slices.Contains(report.GPUDevices, cdi.Kind+"="+target.UUID) {
		return details, fmt.Errorf("GPU %s is not injectable through CDI (problems: %s)", target.UUID, strings.Join(report.Problems, "; "))
	}

	edits, err := injectOne(injector, target.UUID)
	details["edits_for_"+target.UUID] = edits
	if err != nil {
		return details, fmt.Errorf("inject %s into a container spec: %w", target.UUID, err)
	}
	fmt.Fprintf(out, "edits for %s after the hook policy and verification:\n", target.UUID)
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("  ", "  ")
	_ = enc.Encode(edits)
	c.specOK = true
	return details, nil
}

// pickGPU is the lowest-index GPU the allocator would hand out.
func (c *check) pickGPU() (gpu.GPU, bool) {
	for _, g := range c.inv.GPUs() {
		if g.Healthy && g.MIGMode != gpu.MIGEnabled {
			return g, true
		}
	}
	return gpu.GPU{}, false
}

// Edits is what injecting one GPU changed in a default container spec.
type Edits struct {
	Devices []string `json:"devices"`
	Mounts  []string `json:"mounts"`
	Hooks   []string `json:"hooks"`
	Env     []string `json:"env"`
}

// injectOne applies the injector's option for uuid to containerd's default
// spec, as the runtime does last, and lists what it added.
func injectOne(in *cdi.Injector, uuid string) (Edits, error) {
	ctx := namespaces.WithNamespace(context.Background(), "gpu-check")
	ctr := &containers.Container{ID: "gpu-check"}
	s := &oci.Spec{}
	if err := oci.WithDefaultSpec()(ctx, nil, ctr, s); err != nil {
		return Edits{}, err
	}
	beforeMounts := len(s.Mounts)
	beforeEnv := slices.Clone(s.Process.Env)
	opt, err := in.SpecOpts([]string{uuid})
	if err != nil {
		return Edits{}, err
	}
	if err := opt(ctx, nil, ctr, s); err != nil {
		return Edits{}, err
	}
	e := Edits{Devices: []string{}, Mounts: []string{}, Hooks: []string{}, Env: []string{}}
	if s.Linux != nil {
		for _, d := range s.Linux.Devices {
			e.Devices = append(e.Devices, fmt.Sprintf("%s (%s %d:%d)", d.Path, d.Type, d.Major, d.Minor))
		}
	}
	for _, m := range s.Mounts[min(beforeMounts, len(s.Mounts)):] {
		e.Mounts = append(e.Mounts, fmt.Sprintf("%s <- %s (%s)", m.Destination, m.Source, strings.Join(m.Options, ",")))
	}
	if s.Hooks != nil {
		for _, h := range slices.Concat(s.Hooks.Prestart, s.Hooks.CreateRuntime, s.Hooks.CreateContainer, s.Hooks.StartContainer, s.Hooks.Poststart) {
			e.Hooks = append(e.Hooks, strings.Join(h.Args, " "))
		}
	}
	for _, kv := range s.Process.Env {
		if !slices.Contains(beforeEnv, kv) {
			e.Env = append(e.Env, kv)
		}
	}
	return e, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// healthWindow is how long stage 3 lets the watcher run.
const healthWindow = 5 * time.Second

// stageHealth runs the agent's Xid/ECC watcher for a few seconds: it must
// subscribe and keep waiting for events without error.
func (c *check) stageHealth(ctx context.Context, out io.Writer) (any, error) {
	if c.inv == nil {
		return nil, skipped("needs the NVML inventory (stage 1)")
	}
	ctx, cancel := context.WithTimeout(ctx, healthWindow)
	defer cancel()
	pub := &recorder{}
	start := time.Now()
	err := c.inv.WatchHealth(ctx, gpuevents.To(pub))
	ran := time.Since(start)
	details := map[string]any{"watched_seconds": ran.Seconds(), "events": pub.list()}
	for _, e := range pub.list() {
		fmt.Fprintf(out, "  event: %s\n", e.Message)
	}
	switch {
	case err != nil:
		return details, fmt.Errorf("watcher failed: %w", err)
	case ctx.Err() == nil:
		return details, errors.New("watcher stopped at once: no GPU accepted NVML health events (see the log above)")
	}
	fmt.Fprintf(out, "watcher subscribed and waited %.1fs without error; %d event(s)\n", ran.Seconds(), len(pub.list()))
	return details, nil
}

// recorder keeps the events the watcher publishes.
type recorder struct {
	mu     sync.Mutex
	events []events.Event
}

func (r *recorder) Publish(e events.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) list() []events.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// stageAllocation reserves the target GPU with the agent's allocator and
// checks that a second request for it, by UUID and by count, is refused as
// a conflict (HTTP 409 at the API). It leaves the GPU free again.
func (c *check) stageAllocation(_ context.Context, out io.Writer) (any, error) {
	if c.inv == nil {
		return nil, skipped("needs the NVML inventory (stage 1)")
	}
	if c.target.UUID == "" {
		t, ok := c.pickGPU()
		if !ok {
			return nil, errors.New("no healthy GPU without MIG to allocate")
		}
		c.target = t
	}
	c.alloc = gpu.NewAllocator(c.inv)
	const first, second = "gpu-check-first", "gpu-check-second"
	got, err := c.alloc.Reserve(first, gpu.Request{IDs: []string{c.target.UUID}})
	if err != nil {
		return nil, fmt.Errorf("reserve %s: %w", c.target.UUID, err)
	}
	defer c.alloc.Release(first)
	fmt.Fprintf(out, "%s holds %s\n", first, got[0].UUID)
	free, total := c.alloc.Counts()
	details := map[string]any{"reserved": got[0].UUID, "free_after_reserve": free, "total": total}

	refusals := map[string]string{}
	for what, req := range map[string]gpu.Request{
		"by_uuid":  {IDs: []string{c.target.UUID}},
		"by_count": {Count: free + 1},
	} {
		_, err := c.alloc.Reserve(second, req)
		if err == nil {
			c.alloc.Release(second)
			return details, fmt.Errorf("a second request %s was granted: the GPU is not exclusive", what)
		}
		status := errhttp.ToHTTP(err)
		refusals[what] = fmt.Sprintf("%d: %v", status, err)
		fmt.Fprintf(out, "%s asking %s: refused, %d %v\n", second, strings.ReplaceAll(what, "_", " "), status, err)
		if !errdefs.IsConflict(err) {
			return details, fmt.Errorf("a second request %s was refused with %d, want 409: %w", what, status, err)
		}
	}
	details["second_request"] = refusals
	if h := c.alloc.Held(second); len(h) != 0 {
		return details, fmt.Errorf("%s holds %v after being refused", second, h)
	}
	return details, nil
}
