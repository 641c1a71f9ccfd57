package cdi

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"

	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/runtime"
)

// hookSubcommands are the NVIDIA CDI hook's subcommands a spec may run: the
// ones nvcdi generates for compute GPUs. Each runs as root on the host while
// the container is created, so anything else ("nvidia-ctk runtime
// configure", "nvidia-ctk system …") is refused.
var hookSubcommands = []string{
	"create-symlinks",
	"update-ldcache",
	"enable-cuda-compat",
	"disable-device-node-modification",
	"update-application-profile",
	"apply-cuda-memory-limits",
}

// hookStages are the OCI hook stages a spec may use. "prestart" is
// deprecated (it runs in the runtime's namespace with a legacy contract);
// poststart and poststop have no use in device injection.
var hookStages = []string{cdilib.CreateRuntimeHook, cdilib.CreateContainerHook, cdilib.StartContainerHook}

// nvidiaDeviceNames are the /proc/devices names of the NVIDIA driver's
// character devices: their majors, and nvidiaMajor, are the only ones a
// spec may hand a container.
var nvidiaDeviceNames = []string{"nvidia-frontend", "nvidia", "nvidia-uvm", "nvidia-caps", "nvidia-caps-imex-channels", "nvidia-nvlink", "nvidia-nvswitch"}

// nvidiaMajors reads the NVIDIA driver's character majors from
// /proc/devices, plus the fixed nvidiaMajor.
func nvidiaMajors(procDevices string) []int64 {
	majors := []int64{nvidiaMajor}
	f, err := os.Open(procDevices)
	if err != nil {
		return majors
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	char := false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch line {
		case "Character devices:":
			char = true
			continue
		case "Block devices:":
			char = false
			continue
		}
		fields := strings.Fields(line)
		if !char || len(fields) != 2 || !slices.Contains(nvidiaDeviceNames, fields[1]) {
			continue
		}
		if n, err := strconv.ParseInt(fields[0], 10, 64); err == nil && !slices.Contains(majors, n) {
			majors = append(majors, n)
		}
	}
	return majors
}

// editsPolicyProblems describes what in e may not reach a tenant: device
// nodes that are block devices or not NVIDIA's, network devices, extra
// groups, RDT settings, and mounts that are not read-only bind mounts of a
// regular, root-owned file (sockets, directories and writable mounts are
// refused by name).
func (in *Injector) editsPolicyProblems(e *cdispec.ContainerEdits, where string) []string {
	var out []string
	for _, n := range e.DeviceNodes {
		if n == nil {
			continue
		}
		id, ok := nodeIDOf(n)
		switch {
		case n.Type == "b":
			out = append(out, fmt.Sprintf("%s: device node %s is a block device", where, n.Path))
		case !ok:
			out = append(out, fmt.Sprintf("%s: device node %s: its host node %s is not a device", where, n.Path, hostPathOf(n)))
		case id.typ != "c":
			out = append(out, fmt.Sprintf("%s: device node %s (%s) is a block device", where, n.Path, id))
		case !slices.Contains(in.majors, id.major):
			out = append(out, fmt.Sprintf("%s: device node %s (%s) is not an NVIDIA device (allowed majors %v)", where, n.Path, id, in.majors))
		}
	}
	for _, m := range e.Mounts {
		if m == nil {
			continue
		}
		name := fmt.Sprintf("%s: mount %s -> %s", where, m.HostPath, m.ContainerPath)
		if m.Type != "" && m.Type != "bind" {
			out = append(out, fmt.Sprintf("%s: type %q is not a bind mount", name, m.Type))
		}
		if !slices.Contains(m.Options, "ro") || slices.Contains(m.Options, "rw") {
			out = append(out, name+": not read-only")
		}
		if problem := runtime.MountSourceProblem(m.HostPath); problem != "" {
			out = append(out, name+": "+problem)
		}
	}
	for _, nd := range e.NetDevices {
		if nd != nil {
			out = append(out, fmt.Sprintf("%s: network device %s is not allowed", where, nd.HostInterfaceName))
		}
	}
	if len(e.AdditionalGIDs) > 0 {
		out = append(out, fmt.Sprintf("%s: additional groups %v are not allowed", where, e.AdditionalGIDs))
	}
	if e.IntelRdt != nil {
		out = append(out, where+": intelRdt settings are not allowed")
	}
	return out
}

func hostPathOf(n *cdispec.DeviceNode) string {
	if n.HostPath != "" {
		return n.HostPath
	}
	return n.Path
}

// subcommandProblem says why a hook's arguments are not one of the NVIDIA
// hook's known subcommands, or "".
func subcommandProblem(h *cdispec.Hook) string {
	base := filepath.Base(h.Path)
	var sub string
	switch base {
	case "nvidia-cdi-hook":
		if len(h.Args) < 2 || filepath.Base(h.Args[0]) != base {
			return "arguments are not `nvidia-cdi-hook <subcommand>`"
		}
		sub = h.Args[1]
	case "nvidia-ctk":
		if len(h.Args) < 3 || filepath.Base(h.Args[0]) != base || h.Args[1] != "hook" {
			return "arguments are not `nvidia-ctk hook <subcommand>`"
		}
		sub = h.Args[2]
	default:
		return fmt.Sprintf("%s is not an NVIDIA CDI hook", base)
	}
	if !slices.Contains(hookSubcommands, sub) {
		return fmt.Sprintf("subcommand %q is not one of %s", sub, strings.Join(hookSubcommands, ", "))
	}
	return ""
}

// specFileProblems refuses spec files, and the directories they are read
// from, that someone other than root could have written: whoever can write
// a spec decides what every GPU container gets.
func (in *Injector) specFileProblems(paths []string) []string {
	var out []string
	seen := map[string]bool{}
	check := func(path, what string) {
		if seen[path] {
			return
		}
		seen[path] = true
		fi, err := os.Lstat(path)
		if err != nil {
			if !os.IsNotExist(err) {
				out = append(out, fmt.Sprintf("CDI %s %s: %v", what, path, err))
			}
			return
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			if fi, err = os.Stat(path); err != nil {
				out = append(out, fmt.Sprintf("CDI %s %s: %v", what, path, err))
				return
			}
		}
		if perm := fi.Mode().Perm(); perm&0o022 != 0 {
			out = append(out, fmt.Sprintf("CDI %s %s is writable by group or others (mode %04o)", what, path, perm))
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
			out = append(out, fmt.Sprintf("CDI %s %s is owned by uid %d, not root", what, path, st.Uid))
		}
	}
	for _, d := range in.dirs {
		check(d, "spec directory")
	}
	for _, p := range paths {
		check(filepath.Dir(p), "spec directory")
		check(p, "spec file")
	}
	slices.Sort(out)
	return out
}

// driverVersionLine matches the kernel module's version in
// /proc/driver/nvidia/version: "NVRM version: NVIDIA UNIX x86_64 Kernel
// Module  550.54.15  Tue Mar  5 …".
var driverVersionLine = regexp.MustCompile(`Kernel Module(?: for [a-z0-9_]+)?\s+([0-9][0-9.]+)`)

// loadedDriverVersion is the version of the NVIDIA kernel module loaded
// now, or "" when it cannot be read (no driver, or not Linux).
func loadedDriverVersion(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if m := driverVersionLine.FindSubmatch(b); m != nil {
		return string(m[1])
	}
	return ""
}

// staleProblems compares the devices about to be injected with the host as
// inv sees it: each GPU's node must have the minor NVML gives that GPU
// (specs written before GPUs were re-slotted name the wrong node), the
// spec must be for the driver NVML reports and the kernel module loaded
// now must still be that driver, and every file the spec mounts must still
// exist (a driver upgrade removes the old libraries). Without an inventory
// nothing is compared.
func staleProblems(devs []*cdilib.Device, inv Inventory, driverFile string) []string {
	// A CPU rental gets no driver at all, whatever became of it.
	if inv == nil || len(devs) == 0 {
		return nil
	}
	var out []string
	driver := inv.DriverVersion()
	if loaded := loadedDriverVersion(driverFile); loaded != "" && driver != "" && loaded != driver {
		out = append(out, fmt.Sprintf("the loaded NVIDIA driver is %s but NVML reported %s when the agent started: the driver changed; restart the agent", loaded, driver))
	}
	minors := map[string]int{}
	for _, g := range inv.GPUs() {
		minors[g.UUID] = g.MinorNumber
	}
	// A MIG device maps to its parent's node.
	for uuid, minor := range migParentMinors(inv) {
		minors[uuid] = minor
	}
	specsSeen := map[*cdilib.Spec]bool{}
	for _, dev := range devs {
		name := dev.GetQualifiedName()
		minor, ok := minors[dev.Name]
		if !ok {
			out = append(out, fmt.Sprintf("%s: GPU %s is not in the GPU inventory", name, dev.Name))
			continue
		}
		for _, n := range dev.ContainerEdits.DeviceNodes {
			if n == nil {
				continue
			}
			if m := gpuNodePath.FindString(n.Path); m != "" {
				if k, _ := strconv.Atoi(strings.TrimPrefix(n.Path, "/dev/nvidia")); k != minor {
					out = append(out, fmt.Sprintf("%s maps to %s, but NVML gives that GPU minor number %d (/dev/nvidia%d)", name, n.Path, minor, minor))
				}
			}
			if id, ok := nodeIDOf(n); ok && isGPUMinor(id) && id.minor != int64(minor) {
				out = append(out, fmt.Sprintf("%s maps to node %s (%s), but NVML gives that GPU minor number %d", name, n.Path, id, minor))
			}
		}
		spec := dev.GetSpec()
		mounts := slices.Clone(dev.ContainerEdits.Mounts)
		if !specsSeen[spec] {
			specsSeen[spec] = true
			if v := specDriverVersion(spec.Spec); v != "" && driver != "" && v != driver {
				out = append(out, fmt.Sprintf("CDI spec %s is for NVIDIA driver %s, the host has %s", specLabel(spec), v, driver))
			}
			mounts = append(mounts, spec.ContainerEdits.Mounts...)
		}
		for _, m := range mounts {
			if m == nil {
				continue
			}
			if _, err := os.Stat(m.HostPath); os.IsNotExist(err) {
				out = append(out, fmt.Sprintf("CDI spec %s mounts %s, which no longer exists (driver changed?)", specLabel(spec), m.HostPath))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
