package containerd

import (
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
)

// deadRegistry is a loopback address nothing listens on.
func deadRegistry(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func newConfiguredRuntime(t *testing.T, ns string, opts Options) *agent {
	t.Helper()
	opts.Address, opts.Namespace, opts.AgentID, opts.LogDir = daemon.Address, ns, "registry-test", t.TempDir()
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return withLifecycle(t, r, conformance.NewRecorder())
}

// A mirror named in <dir>/<registry>/hosts.toml serves the pull of an image
// whose own registry does not answer.
func TestMirrorFromHostsToml(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	upstream := deadRegistry(t)
	dir := t.TempDir()
	hostDir := filepath.Join(dir, upstream)
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", upstream, registry.Host)
	if err := os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newConfiguredRuntime(t, testNamespace(t), Options{RegistryConfigDir: dir})
	ref := upstream + "/payload:latest"
	inst, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "mirrored", Image: ref, Command: []string{"sleep", "inf"}})
	if err != nil || inst.Status != runtime.StatusRunning {
		t.Fatalf("start through the mirror: %+v %v", inst, err)
	}
	// Without the configuration the same image cannot be pulled: the
	// mirror is what served it.
	plain := newConfiguredRuntime(t, testNamespace(t)+"-plain", Options{RegistryConfigDir: t.TempDir()})
	if _, err := plain.Start(ctx(t), runtime.InstanceSpec{ID: "direct", Image: ref}); err == nil {
		t.Fatal("pulled from a registry that does not answer")
	}
}

// The provider's Docker config.json gives the credentials of a private
// registry to a start that brings none.
func TestRegistryAuthFile(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	reg, ref := ownRegistry(t, "private:latest", 1024)
	reg.RequireBasicAuth("provider", "pr0vider-pass")
	cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, reg.Host, base64.StdEncoding.EncodeToString([]byte("provider:pr0vider-pass")))
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	file, err := LoadAuthFile(path)
	if err != nil {
		t.Fatal(err)
	}
	none := newConfiguredRuntime(t, testNamespace(t)+"-none", Options{})
	if _, err := none.Start(ctx(t), runtime.InstanceSpec{ID: "private", Image: ref}); err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(strings.ToLower(err.Error()), "unauthorized") {
		t.Fatalf("without credentials: %v", err)
	}
	r := newConfiguredRuntime(t, testNamespace(t), Options{RegistryAuthFile: file})
	if _, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "private", Image: ref, Command: []string{"sleep", "inf"}}); err != nil {
		t.Fatalf("with the provider's credentials: %v", err)
	}
}

func TestLoadAuthFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(path, []byte(`{"auths": {"https://index.docker.io/v1/": {"auth": "`+base64.StdEncoding.EncodeToString([]byte("hub:pw"))+`"},
		"registry.example.com:5000": {"username": "u", "password": "p"}}}`), 0o600)
	f, err := LoadAuthFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if u, p, ok := f.lookup("registry-1.docker.io"); !ok || u != "hub" || p != "pw" {
		t.Errorf("docker hub: %q %q %v", u, p, ok)
	}
	if u, _, ok := f.lookup("registry.example.com:5000"); !ok || u != "u" {
		t.Errorf("registry: %q %v", u, ok)
	}
	if _, _, ok := f.lookup("elsewhere.example.com"); ok {
		t.Error("credentials for a host the file does not name")
	}
}
