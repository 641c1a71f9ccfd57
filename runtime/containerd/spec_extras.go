package containerd

import (
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime"
)

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

// ulimits returns the limits a spec gets: its own, and the GPU defaults
// where this host allows raising them.
func (r *Runtime) ulimits(spec runtime.InstanceSpec) map[string]int64 {
	return spec.UlimitsFor(r.raiseRlimits)
}

// filesDir holds the files the agent generates for an instance and mounts
// read-only into it.
func (r *Runtime) filesDir(id string) string {
	return filepath.Join(r.opts.LogDir, "files", id)
}

// writeAuthorizedKeys writes the instance's authorized_keys and returns
// the read-only mount of it, or nothing when the spec has no keys. The file
// is a mount the confinement check allows by name, like the GPUs' driver
// files.
func (r *Runtime) writeAuthorizedKeys(spec runtime.InstanceSpec) ([]runtime.PlanMount, error) {
	if len(spec.SSHAuthorizedKeys) == 0 {
		return nil, nil
	}
	path, err := runtime.WriteAuthorizedKeys(r.filesDir(spec.ID), spec.SSHAuthorizedKeys)
	if err != nil {
		return nil, err
	}
	return []runtime.PlanMount{{HostPath: path, ContainerPath: runtime.AuthorizedKeysPath,
		Options: []string{"ro", "rbind", "nosuid", "nodev", "noexec"}}}, nil
}

// removeFiles removes what writeAuthorizedKeys and the like wrote.
func (r *Runtime) removeFiles(id string) {
	if err := os.RemoveAll(r.filesDir(id)); err != nil {
		r.log.Warn("remove instance files", "instance", id, "error", err)
	}
}
