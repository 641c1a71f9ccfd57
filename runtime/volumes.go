package runtime

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// LabelVolumes lists the names of the volumes an instance has attached,
// comma separated, written before the container is created so that a
// volume is never attached to two rentals, nor deleted under one, across
// restarts too.
const LabelVolumes = LabelPrefix + "volumes.names"

// VolumeRequest attaches a volume to a rental: the volume Name, which
// Owner must own, mounted read-write at MountPath.
type VolumeRequest struct {
	Name      string
	Owner     string
	MountPath string
}

// VolumeMount is a volume attached to a rental: HostPath is the volume's
// directory on the host, bind-mounted read-write at ContainerPath.
type VolumeMount struct {
	Name          string
	HostPath      string
	ContainerPath string
}

// MaxVolumesPerRental bounds the volumes one start attaches.
const MaxVolumesPerRental = 16

// maxMountPathLen bounds a mount path's length.
const maxMountPathLen = 1024

// reservedMountPaths are where the agent or the runtime mounts something of
// its own in every rental: a volume may be mounted neither there, nor
// above (it would hide them), nor, for the pseudo-file systems, below.
var reservedMountPaths = []string{
	"/root/.ssh", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf",
	"/dev/shm", "/dev/pts", "/dev/mqueue", "/run", "/sys/fs/cgroup",
}

// pseudoFSRoots are the kernel's file systems inside a rental: nothing is
// mounted under them.
var pseudoFSRoots = []string{"/proc", "/sys", "/dev"}

// ValidateVolumeMountPath says why a volume may not be mounted at p, or
// returns nil: it must be absolute and clean, not / and not under /proc,
// /sys or /dev, nor at, above or under a path where the agent mounts
// something of its own (/root/.ssh, /etc/hosts, /dev/shm, ...).
func ValidateVolumeMountPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("is required")
	case len(p) > maxMountPathLen:
		return fmt.Errorf("is longer than %d bytes", maxMountPathLen)
	case strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("contains a control character")
	case !path.IsAbs(p):
		return fmt.Errorf("must be an absolute path")
	case path.Clean(p) != p:
		return fmt.Errorf("must be a clean path (no trailing slash, . or ..): %s", path.Clean(p))
	case p == "/":
		return fmt.Errorf("must not be /")
	}
	for _, root := range pseudoFSRoots {
		if within(p, root) {
			return fmt.Errorf("must not be under %s", root)
		}
	}
	for _, r := range reservedMountPaths {
		if within(p, r) || within(r, p) {
			return fmt.Errorf("collides with %s, which the agent mounts", r)
		}
	}
	return nil
}

// within reports whether p is dir or lies under it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// ValidateVolumeRequests checks a start's volumes beyond each one's own
// fields: at most MaxVolumesPerRental, each volume once, and no mount path
// at, above or under another's. field names the offending field.
func ValidateVolumeRequests(vols []VolumeRequest) (field string, err error) {
	if len(vols) > MaxVolumesPerRental {
		return "volumes", fmt.Errorf("must list at most %d volumes", MaxVolumesPerRental)
	}
	for i, v := range vols {
		if err := ValidateVolumeMountPath(v.MountPath); err != nil {
			return fmt.Sprintf("volumes[%d].mount_path", i), err
		}
		for j := range i {
			if vols[j].Name == v.Name {
				return fmt.Sprintf("volumes[%d].name", i), fmt.Errorf("volume %q is listed twice", v.Name)
			}
			if within(v.MountPath, vols[j].MountPath) || within(vols[j].MountPath, v.MountPath) {
				return fmt.Sprintf("volumes[%d].mount_path", i), fmt.Errorf("collides with volumes[%d].mount_path %s", j, vols[j].MountPath)
			}
		}
	}
	return "", nil
}

// ParseVolumeLabel reads the volume names LabelVolumes records.
func ParseVolumeLabel(v string) []string {
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// VolumeMountOptions are the options of a volume's bind mount in an OCI
// spec: read-write, without setuid binaries or device nodes.
var VolumeMountOptions = []string{"rbind", "rw", "nosuid", "nodev"}

// VolumeSourceProblem says why a host path may not be mounted as a
// volume, or "": it must be a directory, not a symbolic link.
func VolumeSourceProblem(p string) string {
	fi, err := os.Lstat(p)
	switch {
	case err != nil:
		return fmt.Sprintf("cannot be read: %v", err)
	case fi.Mode()&os.ModeSymlink != 0:
		return "is a symbolic link"
	case !fi.IsDir():
		return "is not a directory"
	}
	return ""
}

// VolumeMountProblems checks the bind mounts of a final OCI spec that are
// the rental's volumes: each of vols exactly once, at its path, with
// VolumeMountOptions and no read-only option, its source a directory. It
// returns the other mounts, for the device plan's check, which allows no
// read-write bind mount.
func VolumeMountProblems(mounts []specs.Mount, vols []VolumeMount) (rest []specs.Mount, problems []string) {
	seen := make([]bool, len(vols))
	for _, m := range mounts {
		i := slices.IndexFunc(vols, func(v VolumeMount) bool {
			return filepath.Clean(v.HostPath) == filepath.Clean(m.Source) && filepath.Clean(v.ContainerPath) == filepath.Clean(m.Destination)
		})
		if i < 0 || !IsBindMount(m) {
			rest = append(rest, m)
			continue
		}
		if seen[i] {
			problems = append(problems, fmt.Sprintf("volume %s mounted twice at %s", vols[i].Name, m.Destination))
		}
		seen[i] = true
		for _, o := range VolumeMountOptions {
			if !slices.Contains(m.Options, o) {
				problems = append(problems, fmt.Sprintf("volume %s at %s lacks the %s option", vols[i].Name, m.Destination, o))
			}
		}
		if slices.Contains(m.Options, "ro") {
			problems = append(problems, fmt.Sprintf("volume %s at %s is read-only", vols[i].Name, m.Destination))
		}
		if p := VolumeSourceProblem(m.Source); p != "" {
			problems = append(problems, fmt.Sprintf("volume %s: %s %s", vols[i].Name, m.Source, p))
		}
	}
	for i, v := range vols {
		if !seen[i] {
			problems = append(problems, fmt.Sprintf("volume %s is not mounted at %s", v.Name, v.ContainerPath))
		}
	}
	return rest, problems
}
