package main

import (
	"fmt"
	"path/filepath"
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
	// Layers is PULL_MAX_CONCURRENT_LAYERS: layers one pull fetches at
	// once, and ranges of one layer fetched at once.
	Layers int
	// ChunkBytes is PULL_CHUNK_MB in bytes: the size of the ranges a big
	// layer is fetched in; 0: none.
	ChunkBytes int64
}

func loadPullConfig(get func(name, def string) string) (pullConfig, error) {
	c := pullConfig{ConfigDir: get("REGISTRY_CONFIG_DIR", containerd.DefaultCertsDir)}
	if !filepath.IsAbs(c.ConfigDir) {
		return c, &configError{"REGISTRY_CONFIG_DIR", "must be an absolute path"}
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
