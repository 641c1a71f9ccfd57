package containerd

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
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

// filesDir holds the files the agent generates for an instance and mounts
// read-only into it.
func (r *Runtime) filesDir(id string) string {
	return filepath.Join(r.opts.LogDir, "files", id)
}

// writeAuthorizedKeys writes the instance's authorized_keys and returns
// its read-only mounts (root's, and the image user's: see
// backend.AuthorizedKeysPaths), or nothing when the spec has no keys. They
// are mounts the confinement check allows by name, like the GPUs' driver
// files.
func (r *Runtime) writeAuthorizedKeys(ctx context.Context, img containerd.Image, spec runtime.InstanceSpec) ([]runtime.PlanMount, error) {
	if len(spec.SSHAuthorizedKeys) == 0 {
		return nil, nil
	}
	targets, err := imageKeysPaths(ctx, img)
	if err != nil {
		return nil, fmt.Errorf("SSH keys: %w", err)
	}
	path, err := backend.WriteAuthorizedKeys(r.filesDir(spec.ID), spec.SSHAuthorizedKeys)
	if err != nil {
		return nil, err
	}
	var mounts []runtime.PlanMount
	for _, target := range targets {
		mounts = append(mounts, runtime.PlanMount{HostPath: path, ContainerPath: target,
			Options: []string{"ro", "rbind", "nosuid", "nodev", "noexec"}})
	}
	return mounts, nil
}

// imageKeysPaths are the authorized_keys paths for the image's USER, read
// from its config and its /etc/passwd in the content store.
func imageKeysPaths(ctx context.Context, img containerd.Image) ([]string, error) {
	cfg, err := readImageConfig(ctx, img)
	if err != nil {
		return nil, err
	}
	if cfg.Config.User == "" {
		return backend.AuthorizedKeysPaths("", nil), nil
	}
	files, err := readImageFiles(ctx, img, "etc/passwd")
	if err != nil {
		return nil, err
	}
	return backend.AuthorizedKeysPaths(cfg.Config.User, bytes.NewReader(files["etc/passwd"])), nil
}

// removeFiles removes what writeAuthorizedKeys and the like wrote.
func (r *Runtime) removeFiles(id string) {
	if err := os.RemoveAll(r.filesDir(id)); err != nil {
		r.log.Warn("remove instance files", "instance_id", id, "error", err)
	}
}
