package main

import (
	"path/filepath"

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
	return c, nil
}
