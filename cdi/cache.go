package cdi

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
)

// specCache is what the Injector asks of the CDI library's cache. It is an
// interface so that tests can record which device names are looked up.
type specCache interface {
	Refresh() error
	Configure(options ...cdilib.Option) error
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

// refresh rereads the spec directories when what they hold may have changed
// since the last read (see specsState); otherwise the cache already holds
// them, parsed. A spec that fails to load is logged, not fatal: it only
// makes its own devices unresolvable, and a broken spec of another vendor
// must not stop GPU containers.
//
// The CDI library panics on some malformed specs (a null device node, for
// one). A spec file must never stop the agent: the panic is recovered, the
// files that cause it are named in the load problems, and until they are
// fixed no device is injected (fail closed: what the cache still holds is
// from an earlier read).
func (in *Injector) refresh() {
	state, settled := specsState(in.dirs, in.now())
	if in.readState != "" && state == in.readState {
		return
	}
	in.read(in.cache.Refresh)
	in.remember(state, settled)
}

// configure points the cache at the injector's directories and reads
// them, with refresh's recovery.
func (in *Injector) configure() {
	state, settled := specsState(in.dirs, in.now())
	in.read(func() error { return in.cache.Configure(cdilib.WithSpecDirs(in.dirs...)) })
	in.remember(state, settled)
}

// now is the injector's clock: time.Now but in tests.
func (in *Injector) now() time.Time {
	if in.clock != nil {
		return in.clock()
	}
	return time.Now()
}

// remember keeps state, taken before a read, as what the cache holds, when
// it can tell a later change (settled); otherwise the next refresh reads
// again.
func (in *Injector) remember(state string, settled bool) {
	in.readState = ""
	if settled {
		in.readState = state
	}
}

// racyWindow is how recent a spec file's change may be for specsState to
// call the directories settled: a file rewritten in place twice within the
// file system's timestamp granularity, at the same size, would look the
// same after the second write.
const racyWindow = 2 * time.Second

// specsState identifies what the spec directories hold as the CDI library
// reads them (each directory's .json and .yaml files, not its
// subdirectories): every such file's name, inode, size, modification and
// change times, through a symbolic link and of the link itself. A file
// written, replaced, added, removed or re-linked changes it. settled is
// false while any of them changed within racyWindow of now, or a directory
// cannot be listed, when the state cannot be trusted to tell a later
// change.
func specsState(dirs []string, now time.Time) (state string, settled bool) {
	var b strings.Builder
	settled = true
	stamp := func(fi os.FileInfo) {
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			settled = false
			return
		}
		mtime, ctime := time.Unix(st.Mtim.Unix()), time.Unix(st.Ctim.Unix())
		if now.Sub(mtime) < racyWindow || now.Sub(ctime) < racyWindow {
			settled = false
		}
		fmt.Fprintf(&b, " %d:%d:%d:%d:%d:%o", st.Dev, st.Ino, st.Size, mtime.UnixNano(), ctime.UnixNano(), st.Mode)
	}
	for _, dir := range dirs {
		fmt.Fprintf(&b, "\x00%s", dir)
		ents, err := os.ReadDir(dir)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				settled = false
			}
			b.WriteString(" absent")
			continue
		}
		for _, e := range ents {
			if ext := filepath.Ext(e.Name()); e.IsDir() || (ext != ".json" && ext != ".yaml") {
				continue
			}
			fmt.Fprintf(&b, "\x00%s", e.Name())
			path := filepath.Join(dir, e.Name())
			for _, stat := range []func(string) (os.FileInfo, error){os.Lstat, os.Stat} {
				fi, err := stat(path)
				if err != nil {
					b.WriteString(" unreadable")
					settled = false
					continue
				}
				stamp(fi)
			}
		}
	}
	return b.String(), settled
}

// read runs op, a read of the spec directories by the CDI library,
// recovering from its panics.
func (in *Injector) read(op func() error) {
	in.crashed = nil
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				in.crashed = crashingSpecs(in.dirs, p)
				err = fmt.Errorf("the CDI library failed reading the specs: %v", p)
			}
		}()
		return op()
	}()
	if err != nil {
		in.logger.Warn("some CDI specs could not be used", "error", err)
	}
}

// crashingSpecs names the spec files under dirs that make the CDI
// library panic, read one by one; p is the panic the whole read raised.
func crashingSpecs(dirs []string, p any) []string {
	var out []string
	for _, dir := range dirs {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			path := filepath.Join(dir, e.Name())
			if ext := filepath.Ext(path); e.IsDir() || (ext != ".json" && ext != ".yaml") {
				continue
			}
			func() {
				defer func() {
					if q := recover(); q != nil {
						out = append(out, fmt.Sprintf("%s: crashes the CDI library (%v): fix or remove it; no GPU is injected until then", path, q))
					}
				}()
				_, _ = cdilib.ReadSpec(path, 0)
			}()
		}
	}
	if len(out) == 0 {
		out = append(out, fmt.Sprintf("%v: the CDI library crashed reading the specs (%v); no GPU is injected until they are fixed", dirs, p))
	}
	return out
}

// loadProblems describes the spec files that failed to load and the devices
// dropped as conflicting, as of the last refresh.
func (in *Injector) loadProblems() []string {
	out := slices.Clone(in.crashed)
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
	if in.crashed != nil {
		return nil
	}
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
	if in.crashed != nil {
		return nil
	}
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
	if in.crashed != nil {
		return nil, slices.Clone(names)
	}
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
