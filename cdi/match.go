package cdi

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/host-agent/host-agent/gpu"
)

// mismatch rereads the spec directories and says why they do not serve
// want under driver, or "" when they do (see specMismatch). Spec files that
// failed to load or conflict are added, since they are the usual reason.
func (in *Injector) mismatch(want []string, driver string, inv Inventory) string {
	var why string
	in.snapshot(func() {
		why = in.specMismatch(want, driver)
		if why == "" {
			why = in.migMismatch(expectedMIGs(inv), driver)
		}
		if why == "" {
			var devs []*cdilib.Device
			for _, uuid := range append(slices.Clone(want), expectedMIGs(inv)...) {
				if dev := in.cache.GetDevice(qualifiedName(uuid)); dev != nil {
					devs = append(devs, dev)
				}
			}
			if stale := staleProblems(devs, inv, ""); len(stale) > 0 {
				why = stale[0]
			}
		}
		if problems := in.loadProblems(); why != "" && len(problems) > 0 {
			why += " (spec problems: " + strings.Join(problems, "; ") + ")"
		}
	})
	return why
}

// expectedGPUs are the UUIDs a fitting spec names, sorted.
func (in *Injector) expectedGPUs(inv Inventory) []string {
	var out []string
	for _, g := range inv.GPUs() {
		if g.MIGMode == gpu.MIGEnabled {
			in.logger.Warn("GPU has MIG enabled; CDI has no whole-GPU device for it", "gpu", g.UUID)
			continue
		}
		out = append(out, g.UUID)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// specMismatch says why the cache does not serve want under driver, or ""
// when every GPU resolves to a device whose spec names exactly want,
// records driver and passes the hook policy.
func (in *Injector) specMismatch(want []string, driver string) string {
	for _, uuid := range want {
		dev := in.cache.GetDevice(qualifiedName(uuid))
		if dev == nil {
			return fmt.Sprintf("no CDI device for %s", uuid)
		}
		spec := dev.GetSpec()
		if v := specDriverVersion(spec.Spec); v != driver {
			return fmt.Sprintf("%s records driver %q, the host has %q", specLabel(spec), v, driver)
		}
		if names := gpuNames(spec.Spec); !slices.Equal(names, want) {
			return fmt.Sprintf("%s names GPUs [%s], the host has [%s]", specLabel(spec), strings.Join(names, " "), strings.Join(want, " "))
		}
		if problems := in.hooks.deviceProblems(dev); len(problems) > 0 {
			return problems[0]
		}
	}
	return ""
}

// gpuNames are the spec's device names that are GPU UUIDs, sorted.
func gpuNames(raw *cdispec.Spec) []string {
	var out []string
	for _, d := range raw.Devices {
		if gpu.IsGPUUUID(d.Name) {
			out = append(out, d.Name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// specDriverVersion is the driver a spec was made for: its annotation when
// the agent wrote it, otherwise the version suffix of the libcuda or
// libnvidia-ml it mounts (nvidia-ctk mounts libcuda.so.550.54.15).
func specDriverVersion(raw *cdispec.Spec) string {
	if v := raw.Annotations[DriverVersionAnnotation]; v != "" {
		return v
	}
	mounts := slices.Clone(raw.ContainerEdits.Mounts)
	for _, d := range raw.Devices {
		mounts = append(mounts, d.ContainerEdits.Mounts...)
	}
	for _, m := range mounts {
		if m == nil {
			continue
		}
		base := filepath.Base(m.HostPath)
		for _, lib := range []string{"libcuda.so.", "libnvidia-ml.so."} {
			if v, ok := strings.CutPrefix(base, lib); ok && strings.Contains(v, ".") {
				return v
			}
		}
	}
	return ""
}

// expectedMIGs are the MIG devices inv rents (MIG_RENTALS), sorted: a
// fitting spec has a device for each.
func expectedMIGs(inv Inventory) []string {
	mi, ok := inv.(migInventory)
	if !ok || inv == nil {
		return nil
	}
	var out []string
	for _, m := range mi.MIGDevices() {
		out = append(out, m.UUID)
	}
	slices.Sort(out)
	return out
}

// migMismatch says why the cache does not serve the MIG devices under
// driver, or "".
func (in *Injector) migMismatch(migs []string, driver string) string {
	for _, uuid := range migs {
		dev := in.cache.GetDevice(qualifiedName(uuid))
		if dev == nil {
			return fmt.Sprintf("no CDI device for MIG device %s", uuid)
		}
		spec := dev.GetSpec()
		if v := specDriverVersion(spec.Spec); v != driver {
			return fmt.Sprintf("%s records driver %q, the host has %q", specLabel(spec), v, driver)
		}
		if problems := in.hooks.deviceProblems(dev); len(problems) > 0 {
			return problems[0]
		}
	}
	return ""
}
