package cdi

import (
	"fmt"
	"slices"
	"strings"

	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
)

// specCache is what the Injector asks of the CDI library's cache. It is an
// interface so that tests can record which device names are looked up.
type specCache interface {
	Refresh() error
	GetDevice(qualifiedName string) *cdilib.Device
	GetVendorSpecs(vendor string) []*cdilib.Spec
	ListVendors() []string
	ListDevices() []string
	GetErrors() map[string][]error
}

var _ specCache = (*cdilib.Cache)(nil)

// snapshot rereads the spec directories and runs f while no other caller
// can refresh the cache, so that every lookup f makes sees the same specs:
// the devices a plan injects and those it compares them with must not come
// from two different reads.
func (in *Injector) snapshot(f func()) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.refresh()
	f()
}

// refresh rereads the spec directories. A spec that fails to load is
// logged, not fatal: it only makes its own devices unresolvable, and a
// broken spec of another vendor must not stop GPU containers.
func (in *Injector) refresh() {
	if err := in.cache.Refresh(); err != nil {
		in.logger.Warn("some CDI specs could not be used", "err", err)
	}
}

// loadProblems describes the spec files that failed to load and the devices
// dropped as conflicting, as of the last refresh.
func (in *Injector) loadProblems() []string {
	var out []string
	for path, errs := range in.cache.GetErrors() {
		for _, err := range errs {
			out = append(out, fmt.Sprintf("%s: %v", path, err))
		}
	}
	slices.Sort(out)
	return out
}

// qualifiedName is the CDI name of the GPU with this UUID.
func qualifiedName(uuid string) string { return Kind + "=" + uuid }

// gpuDevices are the nvidia.com/gpu devices that resolve in the cache, that
// is, after shadowing by higher-priority directories and conflict removal.
func (in *Injector) gpuDevices() []*cdilib.Device {
	var out []*cdilib.Device
	for _, name := range in.cache.ListDevices() {
		if !strings.HasPrefix(name, Kind+"=") {
			continue
		}
		if dev := in.cache.GetDevice(name); dev != nil {
			out = append(out, dev)
		}
	}
	return out
}

// classDevices are every device any loaded nvidia.com/gpu spec defines,
// including those shadowed by a higher-priority spec or dropped as
// conflicting: foreignNodes decides what each one counts for.
func (in *Injector) classDevices() []*cdilib.Device {
	var out []*cdilib.Device
	for _, spec := range in.cache.GetVendorSpecs(Vendor) {
		if spec.GetClass() != Class {
			continue
		}
		for _, d := range spec.Devices {
			if dev := spec.GetDevice(d.Name); dev != nil {
				out = append(out, dev)
			}
		}
	}
	return out
}

// effectiveDevices picks, for each name, the device the cache resolves it
// to: the one from the highest-priority spec, none when two specs of that
// priority define it. Worked out here rather than asked of the cache, so
// that the only names ever looked up are the ones injected.
func effectiveDevices(devs []*cdilib.Device) map[*cdilib.Device]bool {
	best := map[string][]*cdilib.Device{}
	for _, d := range devs {
		name := d.GetQualifiedName()
		switch cur := best[name]; {
		case len(cur) == 0 || d.GetSpec().GetPriority() > cur[0].GetSpec().GetPriority():
			best[name] = []*cdilib.Device{d}
		case d.GetSpec().GetPriority() == cur[0].GetSpec().GetPriority():
			best[name] = append(cur, d)
		}
	}
	out := map[*cdilib.Device]bool{}
	for _, ds := range best {
		if len(ds) == 1 {
			out[ds[0]] = true
		}
	}
	return out
}

// resolve looks the qualified names up, returning the devices in order and
// the names that did not resolve.
func (in *Injector) resolve(names []string) (devs []*cdilib.Device, unresolved []string) {
	for _, name := range names {
		dev := in.cache.GetDevice(name)
		if dev == nil {
			unresolved = append(unresolved, name)
			continue
		}
		devs = append(devs, dev)
	}
	return devs, unresolved
}

// specLabel names a spec file in messages.
func specLabel(spec *cdilib.Spec) string {
	if spec == nil {
		return "<no spec>"
	}
	return spec.GetPath()
}
