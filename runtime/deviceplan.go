package runtime

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// DevicePlan is everything a device injector (CDI, for GPUs) wants added to
// a container, in terms every back end understands: device nodes, bind
// mounts, environment and OCI hooks. The injector checks it against its own
// policy when it builds it; the back end applies it last, after its own
// options, and then checks the final OCI spec with Verify, so that nothing
// but the plan's devices, mounts and hooks reaches the tenant whichever
// back end or option put it there.
//
// The zero plan is the plan of a container without devices: Verify then
// refuses any device node, bind mount or hook in the spec.
type DevicePlan struct {
	// Names are what the plan injects, e.g. "nvidia.com/gpu=GPU-…", for
	// messages.
	Names   []string
	Devices []PlanDevice
	Mounts  []PlanMount
	// Env entries (NAME=value) replace a variable of the same name.
	Env   []string
	Hooks []PlanHook
}

// PlanDevice is one device node, with the numbers the kernel and the device
// cgroup go by, resolved when the plan was made.
type PlanDevice struct {
	// Path is the node's path in the container, HostPath on the host.
	Path     string
	HostPath string
	// Type is "c" (character) or "b" (block).
	Type         string
	Major, Minor int64
	FileMode     *os.FileMode
	UID, GID     *uint32
	// Access is the device cgroup access granted, e.g. "rwm".
	Access string
}

// PlanMount is a read-only bind mount of one host file.
type PlanMount struct {
	HostPath      string
	ContainerPath string
	Options       []string
}

// PlanHook is one OCI hook and the stage it runs at.
type PlanHook struct {
	// Stage is the OCI hook stage: "createRuntime", "createContainer",
	// "startContainer", "poststart" or "poststop" ("prestart" is
	// deprecated and refused).
	Stage   string
	Path    string
	Args    []string
	Env     []string
	Timeout *int
}

// Hook stages, as the OCI runtime spec names them.
const (
	HookCreateRuntime   = "createRuntime"
	HookCreateContainer = "createContainer"
	HookStartContainer  = "startContainer"
	HookPoststart       = "poststart"
	HookPoststop        = "poststop"
)

// Apply adds the plan to s: devices with their device cgroup rules, bind
// mounts (sorted so that a parent is mounted before what lies under it, as
// CDI does), environment and hooks.
func (p DevicePlan) Apply(s *specs.Spec) error {
	if s == nil {
		return fmt.Errorf("%w: no OCI spec to apply the device plan to", errdefs.ErrInvalidArgument)
	}
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	for _, kv := range p.Env {
		name, _, _ := strings.Cut(kv, "=")
		s.Process.Env = slices.DeleteFunc(s.Process.Env, func(e string) bool {
			n, _, _ := strings.Cut(e, "=")
			return n == name
		})
		s.Process.Env = append(s.Process.Env, kv)
	}
	if len(p.Devices) > 0 {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		if s.Linux.Resources == nil {
			s.Linux.Resources = &specs.LinuxResources{}
		}
	}
	for _, d := range p.Devices {
		s.Linux.Devices = slices.DeleteFunc(s.Linux.Devices, func(e specs.LinuxDevice) bool { return e.Path == d.Path })
		s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{
			Path: d.Path, Type: d.Type, Major: d.Major, Minor: d.Minor,
			FileMode: clonePtr(d.FileMode), UID: clonePtr(d.UID), GID: clonePtr(d.GID),
		})
		major, minor := d.Major, d.Minor
		access := d.Access
		if access == "" {
			access = "rwm"
		}
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{
			Allow: true, Type: d.Type, Major: &major, Minor: &minor, Access: access,
		})
	}
	for _, m := range p.Mounts {
		s.Mounts = slices.DeleteFunc(s.Mounts, func(e specs.Mount) bool {
			return filepath.Clean(e.Destination) == filepath.Clean(m.ContainerPath)
		})
		s.Mounts = append(s.Mounts, specs.Mount{
			Source: m.HostPath, Destination: m.ContainerPath, Type: "bind", Options: slices.Clone(m.Options),
		})
	}
	if len(p.Mounts) > 0 {
		sort.SliceStable(s.Mounts, func(i, j int) bool { return depth(s.Mounts[i].Destination) < depth(s.Mounts[j].Destination) })
	}
	for _, h := range p.Hooks {
		if s.Hooks == nil {
			s.Hooks = &specs.Hooks{}
		}
		oh := specs.Hook{Path: h.Path, Args: slices.Clone(h.Args), Env: slices.Clone(h.Env), Timeout: clonePtr(h.Timeout)}
		switch h.Stage {
		case HookCreateRuntime:
			s.Hooks.CreateRuntime = append(s.Hooks.CreateRuntime, oh)
		case HookCreateContainer:
			s.Hooks.CreateContainer = append(s.Hooks.CreateContainer, oh)
		case HookStartContainer:
			s.Hooks.StartContainer = append(s.Hooks.StartContainer, oh)
		case HookPoststart:
			s.Hooks.Poststart = append(s.Hooks.Poststart, oh)
		case HookPoststop:
			s.Hooks.Poststop = append(s.Hooks.Poststop, oh)
		default:
			return fmt.Errorf("%w: device plan hook %s at unknown stage %q", errdefs.ErrInvalidArgument, h.Path, h.Stage)
		}
	}
	return nil
}

func depth(p string) int {
	p = filepath.Clean(p)
	if p == "/" {
		return 0
	}
	return strings.Count(p, "/")
}

// Verify checks a final OCI spec against the plan and fails with
// FailedPrecondition, naming each problem, when the spec holds anything the
// plan does not:
//
//   - a device node, or a device cgroup rule allowing a device, other than
//     the plan's (wildcard rules included; deny rules are fine);
//   - a bind mount other than the plan's, or one of them not read-only, or
//     whose host path is no longer a regular file (a socket, a directory);
//   - a hook other than the plan's, or a network device.
//
// It also fails when one of the plan's devices is missing from the spec.
// Run it after every option, on the spec the runtime will be given.
func (p DevicePlan) Verify(s *specs.Spec) error {
	var problems []string
	planned := map[string]PlanDevice{}
	for _, d := range p.Devices {
		planned[d.Path] = d
	}
	present := map[string]bool{}
	if s.Linux != nil {
		for _, d := range s.Linux.Devices {
			typ := d.Type
			if typ == "u" {
				typ = "c"
			}
			want, ok := planned[d.Path]
			switch {
			case !ok:
				problems = append(problems, fmt.Sprintf("device node %s (%s %d:%d) is not in the device plan", d.Path, typ, d.Major, d.Minor))
			case want.Type != typ || want.Major != d.Major || want.Minor != d.Minor:
				problems = append(problems, fmt.Sprintf("device node %s is %s %d:%d, the plan says %s %d:%d",
					d.Path, typ, d.Major, d.Minor, want.Type, want.Major, want.Minor))
			default:
				present[d.Path] = true
			}
		}
		if len(s.Linux.NetDevices) > 0 {
			for name := range s.Linux.NetDevices {
				problems = append(problems, fmt.Sprintf("network device %s is not allowed", name))
			}
		}
		if s.Linux.Resources != nil {
			for _, rule := range s.Linux.Resources.Devices {
				if rule.Allow && !p.allowsRule(rule) {
					problems = append(problems, fmt.Sprintf("device cgroup rule %s allows a device outside the device plan", DescribeDeviceRule(rule)))
				}
			}
		}
	}
	for _, d := range p.Devices {
		if !present[d.Path] {
			problems = append(problems, fmt.Sprintf("device node %s of the device plan is missing", d.Path))
		}
	}
	problems = append(problems, p.mountProblems(s.Mounts)...)
	problems = append(problems, p.hookProblems(s.Hooks)...)
	if len(problems) == 0 {
		return nil
	}
	slices.Sort(problems)
	what := "a container without devices"
	if len(p.Names) > 0 {
		what = strings.Join(p.Names, " ")
	}
	return fmt.Errorf("%w: refusing the final spec for %s: %s", errdefs.ErrFailedPrecondition, what,
		strings.Join(slices.Compact(problems), "; "))
}

// allowsRule reports whether an allow rule opens exactly one of the plan's
// devices.
func (p DevicePlan) allowsRule(rule specs.LinuxDeviceCgroup) bool {
	if rule.Major == nil || rule.Minor == nil {
		return false
	}
	for _, d := range p.Devices {
		if rule.Type == d.Type && *rule.Major == d.Major && *rule.Minor == d.Minor {
			return true
		}
	}
	return false
}

// IsBindMount reports whether m mounts a host path into the container.
func IsBindMount(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

func (p DevicePlan) mountProblems(mounts []specs.Mount) []string {
	var out []string
	for _, m := range mounts {
		if !IsBindMount(m) {
			continue
		}
		i := slices.IndexFunc(p.Mounts, func(pm PlanMount) bool {
			return filepath.Clean(pm.HostPath) == filepath.Clean(m.Source) && filepath.Clean(pm.ContainerPath) == filepath.Clean(m.Destination)
		})
		if i < 0 {
			out = append(out, fmt.Sprintf("host mount %s -> %s is not in the device plan", m.Source, m.Destination))
			continue
		}
		if !slices.Contains(m.Options, "ro") || slices.Contains(m.Options, "rw") {
			out = append(out, fmt.Sprintf("host mount %s -> %s is not read-only", m.Source, m.Destination))
		}
		if problem := MountSourceProblem(m.Source); problem != "" {
			out = append(out, fmt.Sprintf("host mount %s -> %s: %s", m.Source, m.Destination, problem))
		}
	}
	return out
}

// MountSourceProblem says why a host path may not be bind-mounted into a
// tenant's container as a driver file, or "" when it may: it must be a
// regular file (after symlinks), owned by root and writable by nobody else.
// Sockets, directories and device nodes are refused: a daemon's socket
// gives the tenant the daemon, a directory whatever appears in it later.
func MountSourceProblem(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Sprintf("cannot be read: %v", err)
	}
	if isDevNull(path, fi) {
		// What NVIDIA's specs mount over paths that must read as empty;
		// every container has /dev/null anyway.
		return ""
	}
	switch mode := fi.Mode(); {
	case mode&os.ModeSocket != 0:
		return "is a socket"
	case mode.IsDir():
		return "is a directory"
	case !mode.IsRegular():
		return fmt.Sprintf("is not a regular file (%s)", mode.Type())
	case mode.Perm()&0o022 != 0:
		return fmt.Sprintf("is writable by group or others (mode %04o)", mode.Perm())
	}
	if uid, ok := fileOwner(fi); ok && uid != 0 {
		return fmt.Sprintf("is owned by uid %d, not root", uid)
	}
	return ""
}

func (p DevicePlan) hookProblems(h *specs.Hooks) []string {
	if h == nil {
		return nil
	}
	var out []string
	check := func(stage string, hooks []specs.Hook) {
		for _, oh := range hooks {
			ok := slices.ContainsFunc(p.Hooks, func(ph PlanHook) bool {
				return ph.Stage == stage && ph.Path == oh.Path && slices.Equal(ph.Args, oh.Args) && slices.Equal(ph.Env, oh.Env)
			})
			if !ok {
				out = append(out, fmt.Sprintf("%s hook %s (%s) is not in the device plan", stage, oh.Path, strings.Join(oh.Args, " ")))
			}
		}
	}
	//nolint:staticcheck // Prestart is deprecated, and for that reason checked too.
	check("prestart", h.Prestart)
	check(HookCreateRuntime, h.CreateRuntime)
	check(HookCreateContainer, h.CreateContainer)
	check(HookStartContainer, h.StartContainer)
	check(HookPoststart, h.Poststart)
	check(HookPoststop, h.Poststop)
	return out
}

// DescribeDeviceRule writes a device cgroup rule as the devices cgroup does
// (type major:minor access, * for any).
func DescribeDeviceRule(rule specs.LinuxDeviceCgroup) string {
	num := func(p *int64) string {
		if p == nil {
			return "*"
		}
		return fmt.Sprint(*p)
	}
	typ := rule.Type
	if typ == "" {
		typ = "a"
	}
	return fmt.Sprintf("%s %s:%s %s", typ, num(rule.Major), num(rule.Minor), rule.Access)
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}
