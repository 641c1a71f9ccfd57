package containerd

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime"
)

// authorizedKeysPath is where a rental's SSH keys appear.
const authorizedKeysPath = "/root/.ssh/authorized_keys"

// withUlimits sets the process limits, soft and hard alike; -1 is
// unlimited.
func withUlimits(limits map[string]int64) oci.SpecOpts {
	names := make([]string, 0, len(limits))
	for k := range limits {
		names = append(names, k)
	}
	sort.Strings(names)
	var opts []oci.SpecOpts
	for _, name := range names {
		v := uint64(math.MaxUint64)
		if limits[name] >= 0 {
			v = uint64(limits[name])
		}
		opts = append(opts, oci.WithRlimit(&specs.POSIXRlimit{Type: "RLIMIT_" + strings.ToUpper(name), Hard: v, Soft: v}))
	}
	return oci.Compose(opts...)
}

// capSysResource is CAP_SYS_RESOURCE's bit: raising a hard limit needs it.
const capSysResource = 24

// canRaiseRlimits reports whether this host lets containers' limits be
// raised above the defaults: a sandbox that withholds CAP_SYS_RESOURCE from
// the agent withholds it from runc too, and every start asking for more
// would fail.
func canRaiseRlimits() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && caps&(1<<capSysResource) != 0
		}
	}
	return false
}

// ulimits returns the limits a spec gets: its own, and the GPU defaults
// where this host allows raising them.
func (r *Runtime) ulimits(spec runtime.InstanceSpec) map[string]int64 {
	out := spec.EnforcedUlimits()
	if _, asked := spec.Ulimits["memlock"]; !asked && !r.raiseRlimits {
		delete(out, "memlock")
	}
	return out
}

// filesDir holds the files the agent generates for an instance and mounts
// read-only into it.
func (r *Runtime) filesDir(id string) string {
	return filepath.Join(r.opts.LogDir, "files", id)
}

// writeAuthorizedKeys writes the instance's authorized_keys (root's, mode
// 0644, which sshd's StrictModes accepts) and returns the read-only mount
// of it, or nothing when the spec has no keys. The file is a mount the
// confinement check allows by name, like the GPUs' driver files.
func (r *Runtime) writeAuthorizedKeys(spec runtime.InstanceSpec) ([]runtime.PlanMount, error) {
	if len(spec.SSHAuthorizedKeys) == 0 {
		return nil, nil
	}
	dir := r.filesDir(spec.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("SSH keys: %w", err)
	}
	path := filepath.Join(dir, "authorized_keys")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(spec.SSHAuthorizedKeys, "\n")+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("SSH keys: %w", err)
	}
	// WriteFile keeps an existing file's mode; the mount check wants
	// exactly this one.
	if err := os.Chmod(tmp, 0o644); err != nil {
		return nil, fmt.Errorf("SSH keys: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("SSH keys: %w", err)
	}
	return []runtime.PlanMount{{HostPath: path, ContainerPath: authorizedKeysPath,
		Options: []string{"ro", "rbind", "nosuid", "nodev", "noexec"}}}, nil
}

// removeFiles removes what writeAuthorizedKeys and the like wrote.
func (r *Runtime) removeFiles(id string) {
	if err := os.RemoveAll(r.filesDir(id)); err != nil {
		r.log.Warn("remove instance files", "instance", id, "error", err)
	}
}
