package cdi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi"
	"github.com/containerd/errdefs"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/gpu"
)

// DriverVersionAnnotation is the spec-level annotation in which a generated
// spec records the driver it was generated for; a driver upgrade changes the
// library files the spec mounts, so the spec is regenerated.
const DriverVersionAnnotation = "host-agent.io/nvidia-driver-version"

// GeneratedSpecFile is the name of the spec EnsureNVIDIASpec writes. JSON
// rather than YAML needs no extra encoder, and the CDI library reads both.
const GeneratedSpecFile = "nvidia.com-gpu.json"

// Inventory is what spec generation needs to know about the host's GPUs.
type Inventory interface {
	// DriverVersion is the NVIDIA driver version, e.g. "550.54.15".
	DriverVersion() string
	// GPUs are the host's GPUs; only UUID and MIGMode are used.
	GPUs() []gpu.GPU
}

var _ Inventory = (*gpu.Inventory)(nil)

// GenerateOptions says where EnsureNVIDIASpec writes and where the driver
// lives. The zero value is right for a host with the driver installed at /.
type GenerateOptions struct {
	// OutDir receives GeneratedSpecFile; empty means /var/run/cdi. It must be
	// one of the Injector's spec directories, or the spec would never be read.
	OutDir string
	// DriverRoot is where the driver's libraries and binaries are found;
	// empty means "/".
	DriverRoot string
	// DevRoot is where the driver's /dev is found; empty means DriverRoot.
	DevRoot string
	// HookPath is the NVIDIA CDI hook binary the spec's hooks run; empty
	// means /usr/bin/nvidia-cdi-hook. It must be an allowed hook path and
	// exist, since every GPU container would fail to start otherwise.
	HookPath string
	// LdconfigPath is the host's ldconfig that the spec's update-ldcache
	// hook runs; empty means the hook's default, /sbin/ldconfig. A host
	// without one (a minimal image) can name a static ldconfig elsewhere.
	LdconfigPath string

	// nvcdiOptions are appended to the generator's options; tests use it to
	// keep a real host's libraries out of a run against an NVML mock.
	nvcdiOptions []nvcdi.Option
}

// EnsureNVIDIASpec makes sure the spec directories hold an NVIDIA spec that
// names every GPU of inv (MIG-enabled ones excepted, which have no
// whole-GPU device) and every MIG device inv rents (MIG_RENTALS) by UUID
// and records inv's driver version, and that
// passes the hook policy. If one does, it does nothing; otherwise it
// generates one with nvcdi through lib and writes it atomically, mode 0644,
// to OutDir/GeneratedSpecFile, and reports generated. On a host without
// GPUs (nil lib or an empty inventory) it does nothing.
//
// A spec the agent did not write (e.g. the toolkit's own
// /var/run/cdi/nvidia.yaml) counts when it matches; its driver version is
// then read from the versioned libcuda/libnvidia-ml it mounts. When one
// that does not match sits in OutDir too, the two conflict and the error
// names it: the agent never deletes a file it did not write.
//
// Bad options are InvalidArgument; a host that cannot get a fitting spec
// (no hook binary, nvcdi failing, a conflicting spec) gives
// FailedPrecondition, Unavailable or Internal. The agent can log those and
// carry on: every GPU injection is then refused with its own error until a
// fitting spec appears.
func (in *Injector) EnsureNVIDIASpec(ctx context.Context, inv Inventory, lib nvml.Interface, opts GenerateOptions) (generated bool, err error) {
	if lib == nil || inv == nil {
		return false, nil
	}
	want := in.expectedGPUs(inv)
	migs := expectedMIGs(inv)
	if len(want) == 0 && len(migs) == 0 {
		return false, nil
	}
	driver := inv.DriverVersion()
	if driver == "" {
		return false, fmt.Errorf("%w: NVML reported no driver version; cannot tell whether the CDI spec fits", errdefs.ErrUnavailable)
	}
	if opts, err = in.generateDefaults(opts); err != nil {
		return false, err
	}

	in.genMu.Lock()
	defer in.genMu.Unlock()
	why := in.mismatch(want, driver, inv)
	if why == "" {
		in.logger.Debug("NVIDIA CDI spec is up to date", "gpus", len(want), "driver", driver)
		return false, nil
	}
	in.logger.Info("generating NVIDIA CDI spec", "reason", why, "dir", opts.OutDir)
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := checkHookBinary(opts.HookPath); err != nil {
		return false, err
	}

	raw, err := generateSpec(lib, opts, in.logger)
	if err != nil {
		return false, err
	}
	path := filepath.Join(opts.OutDir, GeneratedSpecFile)
	if err := in.checkGenerated(raw, path, want, migs, driver); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := writeSpecFile(raw, path); err != nil {
		return false, err
	}

	if why := in.mismatch(want, driver, inv); why != "" {
		return true, fmt.Errorf("%w: wrote %s, but the spec directories still do not fit the GPUs: %s",
			errdefs.ErrFailedPrecondition, path, why)
	}
	in.logger.Info("generated NVIDIA CDI spec", "path", path, "gpus", len(want), "driver", driver)
	return true, nil
}

func (in *Injector) generateDefaults(o GenerateOptions) (GenerateOptions, error) {
	if o.OutDir == "" {
		o.OutDir = cdilib.DefaultDynamicDir
	}
	o.OutDir = filepath.Clean(o.OutDir)
	if !slices.Contains(in.dirs, o.OutDir) {
		return o, fmt.Errorf("%w: CDI output directory %s is not among the spec directories %s",
			errdefs.ErrInvalidArgument, o.OutDir, strings.Join(in.dirs, ":"))
	}
	if o.DriverRoot == "" {
		o.DriverRoot = "/"
	}
	if o.DevRoot == "" {
		o.DevRoot = o.DriverRoot
	}
	if o.HookPath == "" {
		o.HookPath = DefaultHookPaths()[0]
	}
	if !in.hooks.allowed[o.HookPath] {
		return o, fmt.Errorf("%w: CDI hook path %s is not an allowed hook path", errdefs.ErrInvalidArgument, o.HookPath)
	}
	return o, nil
}

// checkGenerated refuses a generated spec that would not serve the GPUs or
// that breaks the hook policy, before it is written.
func (in *Injector) checkGenerated(raw *cdispec.Spec, path string, want, migs []string, driver string) error {
	if raw.Annotations == nil {
		raw.Annotations = map[string]string{}
	}
	raw.Annotations[DriverVersionAnnotation] = driver
	// The lowest version that can express the spec, as nvidia-ctk writes,
	// so that older CDI readers on the host can use it too.
	if v, err := cdispec.MinimumRequiredVersion(raw); err == nil {
		raw.Version = v
	}
	if names := gpuNames(raw); !slices.Equal(names, want) {
		return fmt.Errorf("%w: nvcdi generated devices [%s] for GPUs [%s]", errdefs.ErrFailedPrecondition,
			strings.Join(names, " "), strings.Join(want, " "))
	}
	for _, m := range migs {
		if !slices.ContainsFunc(raw.Devices, func(d cdispec.Device) bool { return d.Name == m }) {
			return fmt.Errorf("%w: nvcdi generated no device for MIG device %s", errdefs.ErrFailedPrecondition, m)
		}
	}
	var policy []string
	policy = append(policy, in.editsPolicyProblems(&raw.ContainerEdits, fmt.Sprintf("CDI spec %s: spec-level edits", path))...)
	for i := range raw.Devices {
		d := &raw.Devices[i]
		policy = append(policy, in.editsPolicyProblems(&d.ContainerEdits, fmt.Sprintf("CDI spec %s: device %s=%s", path, raw.Kind, d.Name))...)
	}
	if len(policy) > 0 {
		for _, pr := range policy {
			in.logger.Error("refusing generated CDI spec that reaches beyond the GPUs", "problem", pr)
		}
		return fmt.Errorf("%w: generated CDI spec reaches beyond the GPUs: %s", errdefs.ErrFailedPrecondition, strings.Join(policy, "; "))
	}
	if problems := in.hooks.specProblems(raw, path); len(problems) > 0 {
		for _, pr := range problems {
			in.logger.Error("refusing generated CDI spec with an unsafe hook", "problem", pr)
		}
		return fmt.Errorf("%w: generated CDI spec has unsafe hooks: %s", errdefs.ErrFailedPrecondition, strings.Join(problems, "; "))
	}
	return nil
}

// checkHookBinary refuses to generate a spec whose hooks would run a
// missing program: runc would fail every GPU container's creation.
func checkHookBinary(path string) error {
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%w: NVIDIA CDI hook %s is missing or not executable (install nvidia-container-toolkit-base, or set the hook path)",
			errdefs.ErrFailedPrecondition, path)
	}
	return nil
}

// generateSpec runs nvcdi over every GPU NVML reports, naming devices by
// UUID only, so that no "all" or index device exists to be asked for.
func generateSpec(lib nvml.Interface, o GenerateOptions, logger *slog.Logger) (raw *cdispec.Spec, err error) {
	// nvcdi calls into NVML and loads libraries; a panic there (the go-nvml
	// mocks panic on methods they lack) must not take the agent down.
	defer func() {
		if r := recover(); r != nil {
			raw, err = nil, fmt.Errorf("%w: generate CDI spec: nvcdi panicked: %v", errdefs.ErrInternal, r)
		}
	}()
	namer, err := nvcdi.NewDeviceNamer(nvcdi.DeviceNameStrategyUUID)
	if err != nil {
		return nil, fmt.Errorf("%w: CDI device namer: %w", errdefs.ErrInternal, err)
	}
	opts := append([]nvcdi.Option{
		nvcdi.WithNvmlLib(lib),
		nvcdi.WithMode(nvcdi.ModeNvml),
		nvcdi.WithVendor(Vendor),
		nvcdi.WithClass(Class),
		nvcdi.WithDeviceNamers(namer),
		nvcdi.WithDriverRoot(o.DriverRoot),
		nvcdi.WithDevRoot(o.DevRoot),
		nvcdi.WithNVIDIACDIHookPath(o.HookPath),
		// No IPC sockets: persistenced's and fabricmanager's sockets
		// would be bind-mounted read-write into every GPU container, and
		// persistenced acts on any PCI address a caller names, so one
		// tenant could change another's GPU.
		nvcdi.WithFeatureFlags(nvcdi.FeatureDisableIPCDiscoverer),
		nvcdi.WithLogger(nvcdiLogger{logger.With("from", "nvcdi")}),
	}, o.nvcdiOptions...)
	if o.LdconfigPath != "" {
		opts = append(opts, nvcdi.WithLdconfigPath(o.LdconfigPath))
	}
	g, err := nvcdi.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: CDI spec generator: %w", errdefs.ErrUnavailable, err)
	}
	s, err := g.GetSpec()
	if err != nil {
		return nil, fmt.Errorf("%w: generate CDI spec: %w", errdefs.ErrUnavailable, err)
	}
	return s.Raw(), nil
}

// writeSpecFile writes raw to path so that a reader sees the old file or
// the whole new one, never a part: a temporary file the cache ignores (it
// reads only .json and .yaml), checked by the CDI library's own parser and
// validation, then renamed over path.
func writeSpecFile(raw *cdispec.Spec, path string) (err error) {
	data, err := json.MarshalIndent(raw, "", "  ")
	if err != nil {
		return fmt.Errorf("%w: encode CDI spec: %w", errdefs.ErrInternal, err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create CDI spec directory: %w", err)
	}
	f, err := os.CreateTemp(dir, ".nvidia.com-gpu-*.tmp")
	if err != nil {
		return fmt.Errorf("write CDI spec: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		// 0644 whatever the umask: containerd and other CDI readers need
		// not run as the agent's user.
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write CDI spec: %w", err)
	}
	if _, err = cdilib.ReadSpec(tmp, 0); err != nil {
		return fmt.Errorf("%w: generated CDI spec is invalid: %w", errdefs.ErrInternal, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write CDI spec: %w", err)
	}
	// Make the rename itself durable; failing that is not worth an error,
	// the spec is regenerated at the next start if it is lost.
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// nvcdiLogger adapts slog to the logger nvcdi wants. nvcdi warns about
// every optional graphics file a headless compute host lacks, dozens per
// run, so its warnings go to Debug; its errors stay visible. What matters
// is logged by EnsureNVIDIASpec itself.
type nvcdiLogger struct{ l *slog.Logger }

func (n nvcdiLogger) logf(level slog.Level, format string, args ...any) {
	if n.l.Enabled(context.Background(), level) {
		n.l.Log(context.Background(), level, fmt.Sprintf(format, args...))
	}
}

func (n nvcdiLogger) Debugf(format string, args ...any)   { n.logf(slog.LevelDebug, format, args...) }
func (n nvcdiLogger) Tracef(format string, args ...any)   { n.logf(slog.LevelDebug-4, format, args...) }
func (n nvcdiLogger) Infof(format string, args ...any)    { n.logf(slog.LevelDebug, format, args...) }
func (n nvcdiLogger) Warningf(format string, args ...any) { n.logf(slog.LevelDebug, format, args...) }
func (n nvcdiLogger) Errorf(format string, args ...any)   { n.logf(slog.LevelWarn, format, args...) }
