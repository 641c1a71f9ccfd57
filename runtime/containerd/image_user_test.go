package containerd

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// storedImage is an image written into a local content store, as a pull
// leaves it: manifest, config and layer blobs.
type storedImage struct {
	cs     content.Store
	target ocispec.Descriptor
	config ocispec.Descriptor
}

func (i *storedImage) Config(context.Context) (ocispec.Descriptor, error) { return i.config, nil }
func (i *storedImage) ContentStore() content.Store                        { return i.cs }
func (i *storedImage) Target() ocispec.Descriptor                         { return i.target }
func (i *storedImage) Platform() platforms.MatchComparer                  { return platforms.All }

// tarEntry is one entry of a test layer; a nil body with a name ending in
// "/" is a directory.
type tarEntry struct {
	name string
	body string
	link string
}

func writeBlob(t *testing.T, cs content.Store, mediaType string, b []byte) ocispec.Descriptor {
	t.Helper()
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	if err := content.WriteBlob(context.Background(), cs, desc.Digest.String(), bytes.NewReader(b), desc); err != nil {
		t.Fatal(err)
	}
	return desc
}

func layerBlob(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body))}
		switch {
		case e.link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
		case e.name[len(e.name)-1] == '/':
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func storeImage(t *testing.T, cfg ocispec.ImageConfig, layers ...[]tarEntry) *storedImage {
	t.Helper()
	cs, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}, Config: cfg}
	var m ocispec.Manifest
	m.SchemaVersion = 2
	m.MediaType = ocispec.MediaTypeImageManifest
	for _, l := range layers {
		b := layerBlob(t, l)
		m.Layers = append(m.Layers, writeBlob(t, cs, ocispec.MediaTypeImageLayerGzip, b))
		img.RootFS.DiffIDs = append(img.RootFS.DiffIDs, digest.FromBytes(b))
	}
	cb, _ := json.Marshal(img)
	m.Config = writeBlob(t, cs, ocispec.MediaTypeImageConfig, cb)
	mb, _ := json.Marshal(m)
	return &storedImage{cs: cs, target: writeBlob(t, cs, ocispec.MediaTypeImageManifest, mb), config: m.Config}
}

const (
	testPasswd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n"
	testGroup  = "root:x:0:\napp:x:1001:\nvideo:x:44:app\nextra:x:2000:other,app\n"
)

var baseLayer = []tarEntry{
	{name: "etc/"},
	{name: "etc/passwd", body: testPasswd},
	{name: "etc/group", body: testGroup},
	{name: "payload", body: "binary"},
}

// The user resolution must never reach for the container's snapshot: a
// nil client and a container whose snapshot does not exist would make
// containerd's own option (which mounts the rootfs) fail.
func resolve(t *testing.T, img oci.Image, user string) (specs.User, error) {
	t.Helper()
	s := defaultSpec(t)
	c := &containers.Container{ID: "x", Snapshotter: "does-not-exist", SnapshotKey: "does-not-exist"}
	err := withImageConfigArgs(img, nil)(context.Background(), nil, c, s)
	if err != nil {
		return specs.User{}, err
	}
	return s.Process.User, nil
}

func TestImageUserResolvedWithoutMount(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		user string
		want specs.User
	}{
		{"", specs.User{UID: 0, GID: 0}},
		{"app", specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{44, 2000}}},
		{"1000", specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{44, 2000}}},
		{"app:extra", specs.User{UID: 1000, GID: 2000}},
		{"app:44", specs.User{UID: 1000, GID: 44}},
		{"1000:2000", specs.User{UID: 1000, GID: 2000}},
		{"4242", specs.User{UID: 4242, GID: 0}},
		{"4242:4343", specs.User{UID: 4242, GID: 4343}},
	} {
		t.Run(tc.user, func(t *testing.T) {
			t.Parallel()
			img := storeImage(t, ocispec.ImageConfig{User: tc.user, Entrypoint: []string{"/payload"}}, baseLayer)
			got, err := resolve(t, img, tc.user)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("user %q = %+v, want %+v", tc.user, got, tc.want)
			}
		})
	}
}

func TestImageUserUnknownIsInvalid(t *testing.T) {
	t.Parallel()
	for _, user := range []string{"nobody-here", "app:no-such-group"} {
		img := storeImage(t, ocispec.ImageConfig{User: user}, baseLayer)
		_, err := resolve(t, img, user)
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("user %q: err = %v, want invalid argument", user, err)
		}
	}
}

func TestImageUserFollowsLayers(t *testing.T) {
	t.Parallel()
	upper := []tarEntry{{name: "etc/"}, {name: "etc/passwd", body: "app:x:3000:3000::/:/bin/sh\n"}}
	whiteout := []tarEntry{{name: "etc/"}, {name: "etc/.wh.passwd"}}
	opaque := []tarEntry{{name: "etc/"}, {name: "etc/.wh..wh..opq"}, {name: "etc/group", body: "g:x:7:\n"}}
	etcGone := []tarEntry{{name: ".wh.etc"}}
	linked := []tarEntry{{name: "etc/"}, {name: "etc/passwd", link: "/elsewhere"}}
	for _, tc := range []struct {
		name    string
		user    string
		layers  [][]tarEntry
		want    specs.User
		wantErr bool
	}{
		{"upper layer wins", "app", [][]tarEntry{baseLayer, upper}, specs.User{UID: 3000, GID: 3000, AdditionalGids: []uint32{44, 2000}}, false},
		{"whiteout removes passwd", "app", [][]tarEntry{baseLayer, whiteout}, specs.User{}, true},
		{"whiteout then added again", "app", [][]tarEntry{baseLayer, whiteout, upper}, specs.User{UID: 3000, GID: 3000, AdditionalGids: []uint32{44, 2000}}, false},
		{"opaque etc hides lower passwd", "app", [][]tarEntry{baseLayer, opaque}, specs.User{}, true},
		{"opaque etc keeps its own group", "0:g", [][]tarEntry{baseLayer, opaque}, specs.User{UID: 0, GID: 7}, false},
		{"etc removed", "app", [][]tarEntry{baseLayer, etcGone}, specs.User{}, true},
		{"link not followed", "app", [][]tarEntry{baseLayer, linked}, specs.User{}, true},
		{"no layers, numeric", "5:6", nil, specs.User{UID: 5, GID: 6}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img := storeImage(t, ocispec.ImageConfig{User: tc.user}, tc.layers...)
			got, err := resolve(t, img, tc.user)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("resolved to %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestImageConfigArgsAndEnv(t *testing.T) {
	t.Parallel()
	img := storeImage(t, ocispec.ImageConfig{
		Entrypoint: []string{"/payload"},
		Cmd:        []string{"sleep", "inf"},
		Env:        []string{"PATH=/bin", "A=image"},
		WorkingDir: "/work",
	}, baseLayer)
	s := defaultSpec(t)
	s.Process.Env = []string{"A=request", "B=request"}
	if err := withImageConfigArgs(img, []string{"echo", "hi"})(context.Background(), nil, &containers.Container{}, s); err != nil {
		t.Fatal(err)
	}
	if want := []string{"/payload", "echo", "hi"}; !reflect.DeepEqual(s.Process.Args, want) {
		t.Errorf("args = %v, want %v", s.Process.Args, want)
	}
	if want := []string{"PATH=/bin", "A=request", "B=request"}; !reflect.DeepEqual(s.Process.Env, want) {
		t.Errorf("env = %v, want %v", s.Process.Env, want)
	}
	if s.Process.Cwd != "/work" {
		t.Errorf("cwd = %q", s.Process.Cwd)
	}
}
