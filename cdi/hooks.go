package cdi

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// hookPolicy decides which OCI hooks a CDI spec may add. Hooks run as root
// on the host while the container is being created, so a spec is the most
// direct way to root the host; CVE-2025-23266 ("NVIDIAScape") showed that a
// hook whose environment the container can influence (LD_PRELOAD from the
// image reaching the toolkit's createContainer hook) is enough. Every hook
// must therefore run a known binary with an environment the spec spells out.
type hookPolicy struct {
	allowed map[string]bool
}

func newHookPolicy(paths []string) (hookPolicy, error) {
	if len(paths) == 0 {
		paths = DefaultHookPaths()
	}
	p := hookPolicy{allowed: map[string]bool{}}
	for _, path := range paths {
		// Only exact, clean, absolute paths: a relative path would be
		// resolved against whatever directory the runtime happens to use.
		if !filepath.IsAbs(path) || filepath.Clean(path) != path {
			return hookPolicy{}, fmt.Errorf("%w: allowed hook path %q is not a clean absolute path", errdefs.ErrInvalidArgument, path)
		}
		p.allowed[path] = true
	}
	return p, nil
}

// editsProblems describes each hook in e that breaks the policy; where says
// which spec and which edits they came from.
func (p hookPolicy) editsProblems(e *cdispec.ContainerEdits, where string) []string {
	if e == nil {
		return nil
	}
	var out []string
	for _, h := range e.Hooks {
		if h == nil {
			continue
		}
		for _, reason := range p.hookProblems(h) {
			out = append(out, fmt.Sprintf("%s: %s hook %q: %s", where, h.HookName, h.Path, reason))
		}
	}
	return out
}

func (p hookPolicy) hookProblems(h *cdispec.Hook) []string {
	var out []string
	if !p.allowed[h.Path] {
		out = append(out, "path is not in the allowed hook paths")
	}
	if !slices.Contains(hookStages, h.HookName) {
		out = append(out, fmt.Sprintf("stage %q is not one of %s", h.HookName, strings.Join(hookStages, ", ")))
	}
	if problem := subcommandProblem(h); problem != "" {
		out = append(out, problem)
	}
	// An empty list is refused like a missing one: the OCI spec's env is
	// omitempty, so [] reaches the runtime as "no env", and runc then runs
	// the hook with its own environment instead of an explicit one.
	if len(h.Env) == 0 {
		out = append(out, "no explicit env")
	}
	for _, kv := range h.Env {
		name, _, _ := strings.Cut(kv, "=")
		if loaderVariable(name) {
			out = append(out, fmt.Sprintf("env sets %s, which changes how the hook binary is loaded", name))
		}
	}
	return out
}

// deviceProblems checks everything injecting dev would add as hooks: its
// own edits and its spec's spec-level edits.
func (p hookPolicy) deviceProblems(dev *cdilib.Device) []string {
	spec := dev.GetSpec()
	out := p.editsProblems(&spec.ContainerEdits, fmt.Sprintf("CDI spec %s: spec-level edits", specLabel(spec)))
	return append(out, p.editsProblems(&dev.ContainerEdits, fmt.Sprintf("CDI spec %s: device %s", specLabel(spec), dev.GetQualifiedName()))...)
}

// specProblems checks every hook a raw spec could add, whichever device is
// injected; used on a freshly generated spec before it is written.
func (p hookPolicy) specProblems(raw *cdispec.Spec, path string) []string {
	out := p.editsProblems(&raw.ContainerEdits, fmt.Sprintf("CDI spec %s: spec-level edits", path))
	for i := range raw.Devices {
		d := &raw.Devices[i]
		out = append(out, p.editsProblems(&d.ContainerEdits, fmt.Sprintf("CDI spec %s: device %s=%s", path, raw.Kind, d.Name))...)
	}
	return out
}

// loaderVariable reports whether the dynamic loader or glibc read the
// variable in a way that can make a program load or execute other code:
// every LD_* variable, plus glibc's list of variables it strips from setuid
// programs for that reason (UNSECURE_ENVVARS) and GLIBC_TUNABLES
// (CVE-2023-4911).
func loaderVariable(name string) bool {
	if strings.HasPrefix(name, "LD_") {
		return true
	}
	switch name {
	case "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
		"MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR":
		return true
	}
	return false
}
