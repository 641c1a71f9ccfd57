package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"maps"
	mathrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	// rate limits blob downloads, in bytes per second; 0 is unlimited.
	rate atomic.Int64
	// stallAfter, when above zero, makes blob downloads stop sending after
	// that many bytes, holding the connection open.
	stallAfter atomic.Int64
	// blobGets counts fetches of each blob path: GETs from its first byte
	// (no Range, or one from byte 0); rangeGets counts GETs with a Range.
	blobMu    sync.Mutex
	blobGets  map[string]int
	rangeGets map[string]int
	// refuseOpenRanges answers a Range without an end 416, as
	// go-containerregistry's registry does; by default such a range is
	// served, as distribution and CDNs serve it.
	refuseOpenRanges atomic.Bool
	// blobsInFlight and mostBlobsInFlight count blob GETs being served.
	blobsInFlight, mostBlobsInFlight atomic.Int64
	// auth is "user:password" once RequireBasicAuth is called.
	auth atomic.Pointer[string]
}

// StartRegistry serves an empty registry on a loopback port.
func StartRegistry() *Registry {
	return startRegistry()
}

// StartDiskRegistry is StartRegistry keeping blobs in files under dir
// rather than in memory, for images of gigabytes.
func StartDiskRegistry(dir string) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return startRegistry(registry.WithBlobHandler(registry.NewDiskBlobHandler(dir))), nil
}

func startRegistry(opts ...registry.Option) *Registry {
	r := &Registry{}
	reg := registry.New(append([]registry.Option{registry.Logger(log.New(io.Discard, "", 0))}, opts...)...)
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if want := r.auth.Load(); want != nil {
			user, pass, ok := req.BasicAuth()
			if !ok || user+":"+pass != *want {
				w.Header().Set("WWW-Authenticate", `Basic realm="host-agent-test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			rng := req.Header.Get("Range")
			r.blobMu.Lock()
			if r.blobGets == nil {
				r.blobGets, r.rangeGets = map[string]int{}, map[string]int{}
			}
			if rng == "" || strings.HasPrefix(rng, "bytes=0-") {
				r.blobGets[req.URL.Path]++
			}
			if rng != "" {
				r.rangeGets[req.URL.Path]++
			}
			r.blobMu.Unlock()
			if strings.HasSuffix(rng, "-") && !r.refuseOpenRanges.Load() {
				closeRange(reg, req)
			}
			n := r.blobsInFlight.Add(1)
			defer r.blobsInFlight.Add(-1)
			for most := r.mostBlobsInFlight.Load(); n > most && !r.mostBlobsInFlight.CompareAndSwap(most, n); most = r.mostBlobsInFlight.Load() {
			}
		}
		if rate := r.rate.Load(); rate > 0 && req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			w = &throttledWriter{ResponseWriter: w, rate: rate}
		}
		if after := r.stallAfter.Load(); after > 0 && req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			w = &stallingWriter{ResponseWriter: w, left: after, done: req.Context().Done()}
		}
		reg.ServeHTTP(w, req)
	}))
	r.Host = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

// RequireBasicAuth makes every later request need these credentials, as a
// private registry does.
func (r *Registry) RequireBasicAuth(user, password string) {
	creds := user + ":" + password
	r.auth.Store(&creds)
}

// Throttle limits blob downloads to bytesPerSec (0: unlimited), so that a
// pull lasts long enough to be watched.
func (r *Registry) Throttle(bytesPerSec int64) { r.rate.Store(bytesPerSec) }

// throttledWriter writes in small pieces at a fixed rate.
type throttledWriter struct {
	http.ResponseWriter
	rate int64
}

func (t *throttledWriter) Write(p []byte) (int, error) {
	const piece = 16 << 10
	n := 0
	for len(p) > 0 {
		k := min(len(p), piece)
		m, err := t.ResponseWriter.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		if f, ok := t.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		time.Sleep(time.Duration(int64(k) * int64(time.Second) / t.rate))
		p = p[k:]
	}
	return n, nil
}

// BlobGets returns how many times each blob was downloaded, by path: the
// GETs from its first byte (one for a blob fetched in ranges).
func (r *Registry) BlobGets() map[string]int {
	r.blobMu.Lock()
	defer r.blobMu.Unlock()
	return maps.Clone(r.blobGets)
}

// RangeGets returns how many GETs with a Range each blob had, by path.
func (r *Registry) RangeGets() map[string]int {
	r.blobMu.Lock()
	defer r.blobMu.Unlock()
	return maps.Clone(r.rangeGets)
}

// MostBlobGetsAtOnce is the most blob GETs the registry served at once.
func (r *Registry) MostBlobGetsAtOnce() int64 { return r.mostBlobsInFlight.Load() }

// RefuseOpenRanges makes later blob GETs with a Range that has no end
// (bytes=N-) fail with 416, as some registries answer them.
func (r *Registry) RefuseOpenRanges() { r.refuseOpenRanges.Store(true) }

// closeRange gives req's open Range (bytes=N-) the blob's last byte as its
// end, which go-containerregistry's registry needs: it asks reg for the
// blob's size.
func closeRange(reg http.Handler, req *http.Request) {
	head := httptest.NewRecorder()
	hreq := req.Clone(req.Context())
	hreq.Method = http.MethodHead
	hreq.Header.Del("Range")
	reg.ServeHTTP(head, hreq)
	size, err := strconv.ParseInt(head.Header().Get("Content-Length"), 10, 64)
	if err != nil || size <= 0 {
		return
	}
	req.Header.Set("Range", req.Header.Get("Range")+strconv.FormatInt(size-1, 10))
}

// StallAfter makes blob downloads stop sending after n bytes and hold the
// connection open until the client gives up (0: never), as a registry
// behind a broken link does.
func (r *Registry) StallAfter(n int64) { r.stallAfter.Store(n) }

// stallingWriter sends left bytes, then blocks until the request ends.
type stallingWriter struct {
	http.ResponseWriter
	left int64
	done <-chan struct{}
}

func (s *stallingWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= s.left {
		s.left -= int64(len(p))
		return s.ResponseWriter.Write(p)
	}
	n, err := s.ResponseWriter.Write(p[:s.left])
	s.left = 0
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	if err != nil {
		return n, err
	}
	<-s.done
	return n, http.ErrAbortHandler
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
	return r.PushPayloadWithPadding(repoTag, 0)
}

// PushPayloadWithPadding pushes the payload image with a second layer of
// padding random bytes: an image no daemon has seen, of a chosen size.
func (r *Registry) PushPayloadWithPadding(repoTag string, padding int) (string, error) {
	bin, err := BuildPayload()
	if err != nil {
		return "", err
	}
	return r.PushPayloadBinary(repoTag, bin, padding)
}

// PushPayloadBinary pushes an image of a payload binary built beforehand,
// for machines without a Go toolchain.
func (r *Registry) PushPayloadBinary(repoTag string, bin []byte, padding int) (string, error) {
	layer, err := layerWith("payload", bin)
	if err != nil {
		return "", err
	}
	layers := []v1.Layer{layer}
	if padding > 0 {
		junk := make([]byte, padding)
		if _, err := rand.Read(junk); err != nil {
			return "", err
		}
		pad, err := layerWith("padding", junk)
		if err != nil {
			return "", err
		}
		layers = append(layers, pad)
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
	img, err = mutate.AppendLayers(img, layers...)
	if err != nil {
		return "", err
	}
	return r.write(repoTag, img)
}

// PushPayloadWithConfig pushes the payload image with its config changed
// by edit (labels, a working directory, ...), as an image a tenant built
// might carry, and returns the reference to pull.
func (r *Registry) PushPayloadWithConfig(repoTag string, edit func(*v1.Config)) (string, error) {
	bin, err := BuildPayload()
	if err != nil {
		return "", err
	}
	layer, err := layerWith("payload", bin)
	if err != nil {
		return "", err
	}
	cfg := v1.Config{Entrypoint: []string{"/payload"}, Env: ImageEnv}
	edit(&cfg)
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{Architecture: goruntime.GOARCH, OS: "linux", Config: cfg})
	if err != nil {
		return "", err
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return "", err
	}
	return r.write(repoTag, img)
}

// PushUserImage pushes the payload with the given /etc/passwd and
// /etc/group and USER set to user, in two layers as a Dockerfile would
// make, and returns the reference to pull.
func (r *Registry) PushUserImage(repoTag, user, passwd, group string) (string, error) {
	bin, err := BuildPayload()
	if err != nil {
		return "", err
	}
	base, err := layerWith("payload", bin)
	if err != nil {
		return "", err
	}
	etc, err := layerOf(map[string][]byte{"etc/passwd": []byte(passwd), "etc/group": []byte(group)})
	if err != nil {
		return "", err
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: goruntime.GOARCH, OS: "linux",
		Config: v1.Config{Entrypoint: []string{"/payload"}, Env: []string{"PATH=/"}, User: user},
	})
	if err != nil {
		return "", err
	}
	if img, err = mutate.AppendLayers(img, base, etc); err != nil {
		return "", err
	}
	return r.write(repoTag, img)
}

// write pushes img as repoTag and returns the reference to pull.
func (r *Registry) write(repoTag string, img v1.Image) (string, error) {
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
	// A directory of its own: parallel tests build at once.
	dir, err := os.MkdirTemp("", "host-agent-payload-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "payload")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build payload: %v\n%s", err, b)
	}
	return os.ReadFile(out)
}

func layerWith(name string, content []byte) (v1.Layer, error) {
	return layerOf(map[string][]byte{name: content})
}

// layerOf is a layer of the files given, in the order of their names.
func layerOf(files map[string][]byte) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		content := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(content); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}

// PushBigImage pushes the payload binary bin as the last layer of an image
// whose layers before it hold size bytes each of random data (one file a
// layer, gzip without compression: random data does not compress), as
// repoTag, and returns the reference to pull. seed chooses the data: the
// same seed makes the same layers.
func (r *Registry) PushBigImage(repoTag string, bin []byte, layers int, size int64, seed uint64) (string, error) {
	var ls []v1.Layer
	for i := range layers {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return randomTar(fmt.Sprintf("data-%d", i), size, seed, uint64(i)), nil
		}, tarball.WithCompressionLevel(gzip.NoCompression))
		if err != nil {
			return "", err
		}
		ls = append(ls, l)
	}
	// The seed beside the payload makes the small layer the image's own:
	// no other image shares it.
	payload, err := layerOf(map[string][]byte{"payload": bin, "seed": fmt.Appendf(nil, "%d\n", seed)})
	if err != nil {
		return "", err
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: goruntime.GOARCH, OS: "linux",
		Config: v1.Config{Entrypoint: []string{"/payload"}, Env: ImageEnv},
	})
	if err != nil {
		return "", err
	}
	if img, err = mutate.AppendLayers(img, append(ls, payload)...); err != nil {
		return "", err
	}
	return r.write(repoTag, img)
}

// randomTar is a tar stream of one file of size bytes drawn from a
// generator seeded with seed and i.
func randomTar(name string, size int64, seed, i uint64) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		var key [32]byte
		binary.LittleEndian.PutUint64(key[:], seed)
		binary.LittleEndian.PutUint64(key[8:], i)
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg})
		if err == nil {
			_, err = io.CopyN(tw, mathrand.NewChaCha8(key), size)
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr
}
