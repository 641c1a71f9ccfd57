package selftest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/hostinfo"
)

// Pinger is what the runtime check asks of the container runtime.
type Pinger interface {
	Info(ctx context.Context) (runtime.Info, error)
}

// minVersion is the oldest version of each runtime the agent is known to
// work against: Debian bookworm's containerd and Docker.
var minVersion = map[string][3]int{"containerd": {1, 6, 0}, "docker": {20, 10, 0}}

// startFix says how to get each runtime answering.
var startFix = map[string]string{
	"containerd": "start containerd (systemctl start containerd, or deploy/setup-host.sh --start-containerd), or point CONTAINERD_ADDRESS at its socket; when the agent runs in a container, mount the socket as the README shows",
	"docker":     "start Docker (systemctl start docker), or point DOCKER_HOST at its socket; when the agent runs in a container, mount /var/run/docker.sock as the README shows",
}

// RuntimeCheck: the runtime (name: containerd or docker) answers at
// address and its version is supported.
func RuntimeCheck(rt Pinger, name, address string) Check {
	return Check{Name: "runtime", Run: func(ctx context.Context) Result {
		info, err := rt.Info(ctx)
		if err != nil {
			return fail(startFix[name], "%s at %s does not answer: %v", name, address, err)
		}
		v := parseVersion(info.Version)
		if v == ([3]int{}) {
			return warn("", "%s %s at %s (version not recognised)", info.Name, info.Version, address)
		}
		if m, known := minVersion[name]; known && less(v, m) {
			return fail(fmt.Sprintf("upgrade %s to %d.%d or later", name, m[0], m[1]),
				"%s %s at %s is too old", info.Name, info.Version, address)
		}
		return ok("%s %s at %s", info.Name, info.Version, address)
	}}
}

var versionRE = regexp.MustCompile(`(\d+)\.(\d+)(?:\.(\d+))?`)

func parseVersion(s string) [3]int {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return [3]int{}
	}
	var v [3]int
	for i := 0; i < 3; i++ {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v
}

func less(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

// InContainer says whether this process runs in a container, where host
// binaries (runc) are not on its PATH.
func InContainer() bool {
	for _, p := range []string{"/.dockerenv", "/run/.containerenv"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// RuncCheck: runc is on PATH (on the host; in the agent's own container it
// is the host's, which the test rental proves).
func RuncCheck(inContainer bool) Check {
	return Check{Name: "runc", Run: func(ctx context.Context) Result {
		path, err := exec.LookPath("runc")
		if err != nil {
			if inContainer {
				return skip("the agent runs in a container; containerd's shim runs the host's runc, which the test rental checks")
			}
			return fail("install runc (apt-get install runc)", "runc is not on PATH")
		}
		out, err := exec.CommandContext(ctx, path, "--version").Output()
		if err != nil {
			return fail("reinstall runc", "%s --version: %v", path, err)
		}
		first, _, _ := strings.Cut(string(out), "\n")
		first = strings.TrimSpace(first)
		if old := runcBeforeFix(first); old != "" {
			return warn("check that your distribution's runc package carries the fix for CVE-2024-21626 (Debian 12's 1.1.5+ds1-1+deb12u1 does), or install runc 1.1.12 or later",
				"%s (%s): runc %s is older than 1.1.12, the release that fixed CVE-2024-21626 (a working directory under /proc/self/fd leaks a host directory); "+
					"distributions backport the fix without changing the version, and the agent refuses working directories under /proc whatever runc is installed", path, first, old)
		}
		return ok("%s (%s)", path, first)
	}}
}

// runcBeforeFix returns runc's version from its --version line when it is
// older than 1.1.12, which fixed CVE-2024-21626; "" when it is that or
// later, or cannot be read.
func runcBeforeFix(line string) string {
	v, ok := strings.CutPrefix(line, "runc version ")
	if !ok {
		return ""
	}
	v = strings.Fields(v + " ")[0]
	core, _, _ := strings.Cut(v, "+")
	core, _, _ = strings.Cut(core, "-")
	var nums [3]int
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return ""
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return ""
		}
		nums[i] = n
	}
	if nums[0] > 1 || (nums[0] == 1 && (nums[1] > 1 || (nums[1] == 1 && nums[2] >= 12))) {
		return ""
	}
	return v
}

// RequiredCNIPlugins are the plugins the rentals' networking runs.
var RequiredCNIPlugins = []string{"bridge", "host-local", "loopback", "portmap", "bandwidth"}

// CNICheck: every required CNI plugin is in one of dirs.
func CNICheck(dirs []string) Check {
	return Check{Name: "cni-plugins", Run: func(context.Context) Result {
		var missing, found []string
		for _, p := range RequiredCNIPlugins {
			at := ""
			for _, d := range dirs {
				if st, err := os.Stat(filepath.Join(d, p)); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
					at = filepath.Join(d, p)
					break
				}
			}
			if at == "" {
				missing = append(missing, p)
			} else {
				found = append(found, at)
			}
		}
		if len(missing) > 0 {
			return fail("apt-get install containernetworking-plugins (they go to /usr/lib/cni), or set CNI_PLUGIN_DIRS to where they are",
				"missing %s in %s", strings.Join(missing, ", "), strings.Join(dirs, ":"))
		}
		return ok("%s", strings.Join(found, ", "))
	}}
}

// GPUView is what the GPU checks read of the inventory.
type GPUView interface {
	Available() bool
	GPUs() []gpu.GPU
	DriverVersion() string
}

// CDICheck: every spec in dirs parses, and each GPU resolves as
// nvidia.com/gpu=<UUID>.
func CDICheck(dirs []string, gpus GPUView) Check {
	return Check{Name: "cdi-specs", Run: func(context.Context) Result {
		cache, err := cdilib.NewCache(cdilib.WithSpecDirs(dirs...), cdilib.WithAutoRefresh(false))
		if err != nil && cache == nil {
			return fail("check the permissions of "+strings.Join(dirs, ", "), "read CDI specs: %v", err)
		}
		_ = cache.Refresh()
		var broken []string
		for path, errs := range cache.GetErrors() {
			if path == "" || strings.HasPrefix(path, "(") {
				continue
			}
			broken = append(broken, fmt.Sprintf("%s: %v", path, errors.Join(errs...)))
		}
		sort.Strings(broken)
		if len(broken) > 0 {
			return fail("fix or remove the broken spec files (nvidia-ctk cdi generate rewrites NVIDIA's; the agent regenerates /var/run/cdi/nvidia.yaml when it is missing)",
				"%d broken spec(s): %s", len(broken), strings.Join(broken, "; "))
		}
		devices := cache.ListDevices()
		var missing []string
		if gpus != nil {
			have := map[string]bool{}
			for _, d := range devices {
				have[d] = true
			}
			for _, g := range gpus.GPUs() {
				if !have["nvidia.com/gpu="+g.UUID] {
					missing = append(missing, g.UUID)
				}
			}
		}
		if len(missing) > 0 {
			return fail("start the agent once (it generates /var/run/cdi/nvidia.yaml), or run nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml",
				"no CDI device for GPU(s) %s", strings.Join(missing, ", "))
		}
		return ok("%d device(s) in %s", len(devices), strings.Join(dirs, ":"))
	}}
}

// NVIDIAPCIDevices counts NVIDIA display/3D controllers on the PCI bus
// under sysRoot (normally /sys), so that a host whose GPUs NVML cannot see
// is told apart from a host without GPUs.
func NVIDIAPCIDevices(sysRoot string) int {
	dirs, _ := filepath.Glob(filepath.Join(sysRoot, "bus/pci/devices/*"))
	n := 0
	for _, d := range dirs {
		vendor, _ := os.ReadFile(filepath.Join(d, "vendor"))
		class, _ := os.ReadFile(filepath.Join(d, "class"))
		if strings.TrimSpace(string(vendor)) == "0x10de" && strings.HasPrefix(strings.TrimSpace(string(class)), "0x03") {
			n++
		}
	}
	return n
}

// NoNVMLFix says how to give the agent NVML.
const NoNVMLFix = "install the NVIDIA driver; when the agent runs in a container, run it with --gpus all (or --device nvidia.com/gpu=all) as the README shows"

// DriverCheck: NVML loads and reports a driver; skipped on a host without
// NVIDIA GPUs.
func DriverCheck(gpus GPUView, pciGPUs int, openErr error) Check {
	return Check{Name: "nvidia-driver", Run: func(context.Context) Result {
		if openErr != nil {
			return fail(NoNVMLFix, "NVML does not work: %v", openErr)
		}
		if gpus == nil || !gpus.Available() {
			if pciGPUs > 0 {
				return fail(NoNVMLFix, "%d NVIDIA GPU(s) on the PCI bus but NVML (libnvidia-ml.so.1) is not loadable: GPU rentals are refused", pciGPUs)
			}
			return skip("no NVIDIA driver")
		}
		return ok("driver %s, %d GPU(s)", gpus.DriverVersion(), len(gpus.GPUs()))
	}}
}

// PCIeCheck: each GPU's link runs at its maximum width, and generation
// (a lower generation is only a warning: idle GPUs lower it to save power).
func PCIeCheck(gpus GPUView) Check {
	return Check{Name: "pcie-link", Run: func(context.Context) Result {
		if gpus == nil || !gpus.Available() {
			return skip("no NVIDIA driver")
		}
		var narrow, slow []string
		for _, g := range gpus.GPUs() {
			if g.PCIeWidthMax > 0 && g.PCIeWidthCurrent < g.PCIeWidthMax {
				narrow = append(narrow, fmt.Sprintf("GPU %d x%d of x%d", g.Index, g.PCIeWidthCurrent, g.PCIeWidthMax))
			}
			if g.PCIeGenMax > 0 && g.PCIeGenCurrent < g.PCIeGenMax {
				slow = append(slow, fmt.Sprintf("GPU %d gen %d of %d", g.Index, g.PCIeGenCurrent, g.PCIeGenMax))
			}
		}
		if len(narrow) > 0 {
			return fail("reseat the GPU or its riser, check the slot's wiring and BIOS lane settings", "link narrower than its maximum: %s", strings.Join(narrow, ", "))
		}
		if len(slow) > 0 {
			return warn("if it stays low under load, check the BIOS PCIe generation setting and the riser", "link generation below maximum (normal while idle): %s", strings.Join(slow, ", "))
		}
		return ok("%d GPU(s) at full width and generation", len(gpus.GPUs()))
	}}
}

// HealthCheck: no GPU taken out of service (Xid, ECC), and no page
// retirement or row remapping pending or failed, read through lib.
func HealthCheck(gpus GPUView, lib nvml.Interface) Check {
	return Check{Name: "gpu-health", Run: func(context.Context) Result {
		if gpus == nil || !gpus.Available() {
			return skip("no NVIDIA driver")
		}
		var bad []string
		for _, g := range gpus.GPUs() {
			if !g.Healthy {
				bad = append(bad, fmt.Sprintf("GPU %d: %s", g.Index, g.UnhealthyReason))
			}
			if lib == nil {
				continue
			}
			dev, ret := lib.DeviceGetHandleByUUID(g.UUID)
			if ret != nvml.SUCCESS {
				continue
			}
			if st, ret := dev.GetRetiredPagesPendingStatus(); ret == nvml.SUCCESS && st == nvml.FEATURE_ENABLED {
				bad = append(bad, fmt.Sprintf("GPU %d: page retirement pending", g.Index))
			}
			if _, _, pending, failure, ret := dev.GetRemappedRows(); ret == nvml.SUCCESS && (pending || failure) {
				bad = append(bad, fmt.Sprintf("GPU %d: row remapping pending=%v failed=%v", g.Index, pending, failure))
			}
		}
		if len(bad) > 0 {
			return fail("reset the GPU (nvidia-smi -r -i N) with no rental on it; a GPU that keeps failing needs replacing", "%s", strings.Join(bad, "; "))
		}
		return ok("%d GPU(s) healthy, no retirement or remapping pending", len(gpus.GPUs()))
	}}
}

// DiskCheck: at least minFree bytes free at the runtime's root.
func DiskCheck(root string, minFree uint64) Check {
	return Check{Name: "disk", Run: func(context.Context) Result {
		free, err := hostinfo.FreeBytes(root)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return warn("mount it read-only into the agent's container to have it measured, or set CONTAINERD_ROOT", "%s is not visible here", root)
			}
			return fail("set CONTAINERD_ROOT to containerd's root directory", "%v", err)
		}
		if free < minFree {
			return fail("free space on that file system (ctr -n rentals images prune --all removes unused images) or move containerd's root to a larger disk",
				"%s: %.1f GiB free, want at least %.1f GiB", root, gib(free), gib(minFree))
		}
		return ok("%s: %.1f GiB free", root, gib(free))
	}}
}

func gib(b uint64) float64 { return float64(b) / (1 << 30) }

// PortRangeCheck: every TCP port in [lo, hi] can be bound on the host, so
// that a published port never lands on a service of the host's.
func PortRangeCheck(lo, hi int) Check {
	return Check{Name: "host-ports", Run: func(context.Context) Result {
		if lo <= 0 || hi < lo || hi > 65535 {
			return fail("set HOST_PORT_RANGE to LOW-HIGH within 1-65535", "invalid range %d-%d", lo, hi)
		}
		var taken []string
		for p := lo; p <= hi; p++ {
			ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
			if err != nil {
				taken = append(taken, strconv.Itoa(p))
				continue
			}
			ln.Close()
		}
		if len(taken) > 0 {
			shown := taken
			if len(shown) > 10 {
				shown = append(shown[:10:10], "...")
			}
			return fail("choose a HOST_PORT_RANGE no service of the host uses, or move the service (ss -ltnp shows who holds them)",
				"%d port(s) in %d-%d are in use: %s", len(taken), lo, hi, strings.Join(shown, ", "))
		}
		return ok("%d-%d: all %d ports bindable", lo, hi, hi-lo+1)
	}}
}

// RentalCheck starts a real test rental of image through rt, on the GPU
// choose picks (see ChooseTestGPU; nil or "": none), checks it ran and saw
// exactly its GPU, then removes it. The reason choose gives for taking no
// GPU on a host that has some is added to the check's detail.
func RentalCheck(rt runtime.Runtime, image string, choose func(context.Context) (uuid, skipped string)) Check {
	return Check{Name: "test-rental", Run: func(ctx context.Context) Result {
		spec := runtime.InstanceSpec{Image: image, Command: []string{"ls", "/dev"}}
		var uuid, skipped string
		if choose != nil {
			uuid, skipped = choose(ctx)
		}
		gpuCount := 0
		if uuid != "" {
			spec.GPURequest = runtime.GPURequest{IDs: []string{uuid}}
			gpuCount = 1
		}
		fix := "see the detail: the image must be pullable (set SELFTEST_IMAGE to an image a registry here serves), runc must work, and containerd must be able to create containers"
		id, stop, err := startTestRental(ctx, rt, spec)
		defer stop()
		if err != nil {
			return fail(fix, "start %s: %v", image, err)
		}
		inst, err := waitTestRental(ctx, rt, id, runtime.StatusExited)
		if err != nil {
			return fail(fix, "%v", err)
		}
		if inst.ExitCode == nil || *inst.ExitCode != 0 {
			return fail(fix, "the test rental exited with %v", inst.ExitCode)
		}
		out, _, err := rt.Logs(ctx, id, 1000)
		if err != nil {
			return fail(fix, "read the test rental's log: %v", err)
		}
		var nvidia []string
		for _, name := range strings.Fields(string(out)) {
			if regexp.MustCompile(`^nvidia[0-9]+$`).MatchString(name) {
				nvidia = append(nvidia, name)
			}
		}
		if len(nvidia) != gpuCount {
			return fail("check the CDI spec (cdi-specs above): a rental must see exactly its GPUs",
				"the test rental saw %d GPU device(s) %v, want %d", len(nvidia), nvidia, gpuCount)
		}
		if uuid != "" {
			return ok("%s ran in %s and exited 0, seeing %d GPU(s): %s (%s)", image, id, len(nvidia), strings.Join(nvidia, " "), uuid)
		}
		if skipped != "" {
			return ok("%s ran in %s and exited 0 without a GPU; %s", image, id, skipped)
		}
		return ok("%s ran in %s and exited 0, seeing %d GPU(s)", image, id, len(nvidia))
	}}
}

// startTestRental starts spec under a new self-test ID; stop terminates
// and removes it, even once ctx is done, and is to be called also when the
// start failed (a start the caller stopped waiting for goes on).
func startTestRental(ctx context.Context, rt runtime.Runtime, spec runtime.InstanceSpec) (id string, stop func(), err error) {
	spec.ID = fmt.Sprintf("selftest-%d", time.Now().UnixNano())
	stop = func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = rt.Terminate(cctx, spec.ID, time.Second)
	}
	_, err = rt.Start(ctx, spec)
	return spec.ID, stop, err
}

// waitTestRental waits for the test rental to reach status (or exit).
func waitTestRental(ctx context.Context, rt runtime.Runtime, id string, status runtime.Status) (runtime.Instance, error) {
	for {
		inst, err := rt.Get(ctx, id)
		if err != nil {
			return inst, fmt.Errorf("read back the test rental: %w", err)
		}
		if inst.Status == status || inst.Status == runtime.StatusExited {
			return inst, nil
		}
		select {
		case <-ctx.Done():
			return inst, fmt.Errorf("the test rental is still %s: %w", inst.Status, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DiskLimitCheck says how rentals' disk limits are enforced (runtime/disk):
// hard where the file system refuses writes past a limit, watched where
// the agent stops a rental over it. It fails only when that cannot be
// found out.
func DiskLimitCheck(enforcement func(context.Context) (disk.Enforcement, error)) Check {
	return Check{Name: "disk-limits", Run: func(ctx context.Context) Result {
		e, err := enforcement(ctx)
		if err != nil {
			return fail("check that the container runtime answers and that its data directory is visible to the agent", "how disk limits are enforced: %v", err)
		}
		return ok("%s: %s", e.Mode, e.Why)
	}}
}
