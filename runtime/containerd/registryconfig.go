package containerd

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"

	"github.com/host-agent/host-agent/runtime"
)

// DefaultCertsDir is where the provider configures registry mirrors and
// certificates, as containerd does: <dir>/<host>/hosts.toml.
const DefaultCertsDir = "/etc/containerd/certs.d"

// AuthFile is a Docker config.json's credentials, by registry host.
type AuthFile map[string][2]string

// LoadAuthFile reads the "auths" of a Docker config.json
// (REGISTRY_AUTH_FILE): {"auths": {"host": {"auth": base64(user:pass)}}}
// or with "username" and "password".
func LoadAuthFile(path string) (AuthFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Auths map[string]struct {
			Auth     string `json:"auth"`
			Username string `json:"username"`
			Password string `json:"password"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := AuthFile{}
	for host, a := range cfg.Auths {
		user, pass := a.Username, a.Password
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("%s: auth of %s is not base64", path, host)
			}
			var ok bool
			if user, pass, ok = strings.Cut(string(raw), ":"); !ok {
				return nil, fmt.Errorf("%s: auth of %s is not user:password", path, host)
			}
		}
		host = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(host, "https://"), "http://"), "/")
		if i := strings.IndexByte(host, '/'); i >= 0 {
			host = host[:i] // "https://index.docker.io/v1/"
		}
		if host == "index.docker.io" {
			host = "docker.io"
		}
		out[host] = [2]string{user, pass}
	}
	return out, nil
}

// lookup returns the file's credentials for host, Docker Hub's for any of
// its hosts.
func (f AuthFile) lookup(host string) (string, string, bool) {
	if c, ok := f[host]; ok {
		return c[0], c[1], true
	}
	if dockerHubHosts[strings.ToLower(hostname(host))] {
		if c, ok := f["docker.io"]; ok {
			return c[0], c[1], true
		}
	}
	return "", "", false
}

// credentials gives a request's own credentials to its image's registry
// only, and the provider's (REGISTRY_AUTH_FILE) to the hosts they name.
func credentials(auth *runtime.RegistryAuth, registryHost string, file AuthFile) func(string) (string, string, error) {
	return func(host string) (string, string, error) {
		if auth != nil && sameRegistry(registryHost, host) {
			return auth.Username, auth.Password, nil
		}
		if u, p, ok := file.lookup(host); ok {
			return u, p, nil
		}
		return "", "", nil
	}
}

// resolver is newCountingResolver with the provider's registry
// configuration: a hosts.toml under certsDir/<registry host>/ (mirrors,
// certificates) is honoured as containerd honours it; without one the
// registry is spoken to directly.
func (r *Runtime) resolver(ctx context.Context, auth *runtime.RegistryAuth, registryHost string, received *atomic.Int64) remotes.Resolver {
	dir := r.opts.RegistryConfigDir
	if dir == "" {
		dir = DefaultCertsDir
	}
	if _, err := os.Stat(filepath.Join(dir, registryHostDir(registryHost), "hosts.toml")); err != nil {
		return newResolverWith(auth, registryHost, received, r.opts.RegistryAuthFile)
	}
	return docker.NewResolver(docker.ResolverOptions{Hosts: dockerconfig.ConfigureHosts(ctx, dockerconfig.HostOptions{
		HostDir:     dockerconfig.HostDirFromRoot(dir),
		Credentials: credentials(auth, registryHost, r.opts.RegistryAuthFile),
		UpdateClient: func(c *http.Client) error {
			if received != nil {
				next := c.Transport
				if next == nil {
					next = http.DefaultTransport
				}
				c.Transport = countingTransport{next: next, n: received}
			}
			return nil
		},
	})})
}

// registryHostDir is the directory name containerd gives a registry host.
func registryHostDir(host string) string {
	if host == "docker.io" {
		return "docker.io"
	}
	return host
}
