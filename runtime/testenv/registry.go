package testenv

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Registry is an OCI registry served in-process on 127.0.0.1.
type Registry struct {
	srv  *httptest.Server
	Host string // 127.0.0.1:PORT
}

// StartRegistry serves an empty registry on a loopback port.
func StartRegistry() *Registry {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	return &Registry{srv: srv, Host: strings.TrimPrefix(srv.URL, "http://")}
}

// Close stops the registry.
func (r *Registry) Close() { r.srv.Close() }

// ImageEnv is the environment baked into the payload image. It claims every
// GPU, as a hostile or careless image might, to show that it gains nothing.
var ImageEnv = []string{"PATH=/", "NVIDIA_VISIBLE_DEVICES=all", "PAYLOAD_IMAGE=1"}

// PushPayload builds the payload program statically, wraps it as the only
// file of an image whose entrypoint it is, pushes it as repo:tag and returns
// the reference to pull.
func (r *Registry) PushPayload(repoTag string) (string, error) {
	bin, err := BuildPayload()
	if err != nil {
		return "", err
	}
	layer, err := layerWith("payload", bin)
	if err != nil {
		return "", err
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: goruntime.GOARCH,
		OS:           "linux",
		Config: v1.Config{
			Entrypoint: []string{"/payload"},
			Env:        ImageEnv,
		},
	})
	if err != nil {
		return "", err
	}
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return "", err
	}
	ref := r.Host + "/" + repoTag
	parsed, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(parsed, img); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	return ref, nil
}

// BuildPayload compiles the payload program and returns the binary.
func BuildPayload() ([]byte, error) {
	_, file, _, _ := goruntime.Caller(0)
	src := filepath.Join(filepath.Dir(file), "payload")
	out := filepath.Join(os.TempDir(), fmt.Sprintf("host-agent-payload-%d", os.Getpid()))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build payload: %v\n%s", err, b)
	}
	defer os.Remove(out)
	return os.ReadFile(out)
}

func layerWith(name string, content []byte) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(content); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}
