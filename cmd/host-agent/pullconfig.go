package main

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/host-agent/host-agent/runtime/containerd"
)

// pullConfig is the provider's registry configuration.
type pullConfig struct {
	// AuthFile is REGISTRY_AUTH_FILE read: a Docker config.json's
	// credentials, by registry host.
	AuthFile containerd.AuthFile
	// ConfigDir is REGISTRY_CONFIG_DIR, containerd's certs.d layout
	// (<dir>/<host>/hosts.toml): mirrors and certificates.
	ConfigDir string
	// Snapshotter is SNAPSHOTTER: the containerd snapshotter rentals'
	// images are unpacked into; unset (""), containerd's default
	// (overlayfs).
	// "stargz" pulls eStargz images lazily (containerd only).
	Snapshotter string
	// Layers is PULL_MAX_CONCURRENT_LAYERS: layers one pull fetches at
	// once, and ranges of one layer fetched at once.
	Layers int
	// ChunkBytes is PULL_CHUNK_MB in bytes: the size of the ranges a big
	// layer is fetched in; 0: none.
	ChunkBytes int64
}

// snapshotterName is what containerd accepts as a plugin's ID.
var snapshotterName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// checkSnapshotter refuses a snapshotter the runtime cannot use: Docker
// unpacks images with its own storage driver (overlay2, which overlayfs
// names as well), and has no lazy pulling.
func checkSnapshotter(runtimeName, snapshotter string) error {
	if runtimeName == runtimeDocker && snapshotter != "" && snapshotter != "overlayfs" {
		return &configError{"SNAPSHOTTER", fmt.Sprintf("%q is not available on the Docker back end (RUNTIME=docker): "+
			"Docker pulls with its own storage driver and cannot pull lazily; use RUNTIME=containerd, or unset SNAPSHOTTER", snapshotter)}
	}
	return nil
}

func loadPullConfig(get func(name, def string) string) (pullConfig, error) {
	c := pullConfig{ConfigDir: get("REGISTRY_CONFIG_DIR", containerd.DefaultCertsDir)}
	if !filepath.IsAbs(c.ConfigDir) {
		return c, &configError{"REGISTRY_CONFIG_DIR", "must be an absolute path"}
	}
	if c.Snapshotter = get("SNAPSHOTTER", ""); c.Snapshotter != "" && !snapshotterName.MatchString(c.Snapshotter) {
		return c, &configError{"SNAPSHOTTER", fmt.Sprintf("want overlayfs, stargz or another snapshotter containerd has, got %q", c.Snapshotter)}
	}
	if path := get("REGISTRY_AUTH_FILE", ""); path != "" {
		if err := checkSecretFile(path); err != nil {
			return c, &configError{"REGISTRY_AUTH_FILE", err.Error()}
		}
		f, err := containerd.LoadAuthFile(path)
		if err != nil {
			return c, &configError{"REGISTRY_AUTH_FILE", err.Error()}
		}
		c.AuthFile = f
	}
	layers, err := strconv.Atoi(get("PULL_MAX_CONCURRENT_LAYERS", strconv.Itoa(containerd.DefaultPullLayers)))
	if err != nil || layers < 1 || layers > maxPullLayers {
		return c, &configError{"PULL_MAX_CONCURRENT_LAYERS", fmt.Sprintf("want a whole number from 1 to %d", maxPullLayers)}
	}
	c.Layers = layers
	chunk, err := strconv.Atoi(get("PULL_CHUNK_MB", "0"))
	if err != nil || chunk < 0 || chunk > maxPullChunkMB {
		return c, &configError{"PULL_CHUNK_MB", fmt.Sprintf("want a whole number of MiB from 0 (each layer over one connection) to %d", maxPullChunkMB)}
	}
	c.ChunkBytes = int64(chunk) << 20
	return c, nil
}

// Bounds of the pull settings: a pull holds up to layers² connections and
// layers² ranges of PULL_CHUNK_MB in memory.
const (
	maxPullLayers  = 32
	maxPullChunkMB = 256
)
