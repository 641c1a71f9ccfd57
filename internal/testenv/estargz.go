package testenv

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"fmt"
	"io"
	goruntime "runtime"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// EstargzImage is an eStargz image pushed by PushEstargzPayload.
type EstargzImage struct {
	Ref string
	// Size is the size of its layers' blobs, as a full pull fetches them.
	Size int64
	// Padding are the digests of the layers of random bytes no payload
	// reads.
	Padding []v1.Hash
}

// PushEstargzPayload pushes the payload image in eStargz, a lazy
// snapshotter's format: the payload binary in one layer, and padding
// random bytes as /padding in another, which the payload does not read.
func (r *Registry) PushEstargzPayload(repoTag string, padding int) (EstargzImage, error) {
	return r.PushEstargzPayloadLayers(repoTag, 1, padding)
}

// PushEstargzPayloadLayers is PushEstargzPayload with layers layers of
// padding, each of layerSize random bytes (/padding-N), as a big image
// of several layers has.
func (r *Registry) PushEstargzPayloadLayers(repoTag string, layers, layerSize int) (EstargzImage, error) {
	bin, err := BuildPayload()
	if err != nil {
		return EstargzImage{}, err
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: goruntime.GOARCH,
		OS:           "linux",
		Config:       v1.Config{Entrypoint: []string{"/payload"}, Env: ImageEnv},
	})
	if err != nil {
		return EstargzImage{}, err
	}
	out := EstargzImage{}
	for i := -1; i < layers; i++ {
		name, content := "payload", bin
		if i >= 0 {
			name, content = "padding-"+strconv.Itoa(i), make([]byte, layerSize)
			if _, err := rand.Read(content); err != nil {
				return EstargzImage{}, err
			}
		}
		layer, annotations, err := estargzLayer(name, content)
		if err != nil {
			return EstargzImage{}, err
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: layer, Annotations: annotations}); err != nil {
			return EstargzImage{}, err
		}
		size, err := layer.Size()
		if err != nil {
			return EstargzImage{}, err
		}
		out.Size += size
		if i >= 0 {
			d, err := layer.Digest()
			if err != nil {
				return EstargzImage{}, err
			}
			out.Padding = append(out.Padding, d)
		}
	}
	if out.Ref, err = r.write(repoTag, img); err != nil {
		return EstargzImage{}, err
	}
	return out, nil
}

// PushEstargzUserImage is PushUserImage in eStargz: the payload, and
// /etc/passwd and /etc/group in a second layer, with USER set to user.
func (r *Registry) PushEstargzUserImage(repoTag, user, passwd, group string) (string, error) {
	bin, err := BuildPayload()
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
	for _, files := range []map[string][]byte{
		{"payload": bin},
		{"etc/passwd": []byte(passwd), "etc/group": []byte(group)},
	} {
		tarLayer, err := layerOf(files)
		if err != nil {
			return "", err
		}
		layer, annotations, err := toEstargz(tarLayer)
		if err != nil {
			return "", err
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: layer, Annotations: annotations}); err != nil {
			return "", err
		}
	}
	return r.write(repoTag, img)
}

// estargzLayer is a layer of one file in eStargz, with the annotations
// the snapshotter verifies it by.
func estargzLayer(name string, content []byte) (v1.Layer, map[string]string, error) {
	layer, err := layerWith(name, content)
	if err != nil {
		return nil, nil, err
	}
	return toEstargz(layer)
}

// toEstargz converts layer to eStargz.
func toEstargz(layer v1.Layer) (v1.Layer, map[string]string, error) {
	rc, err := layer.Uncompressed()
	if err != nil {
		return nil, nil, err
	}
	tarBytes, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, nil, err
	}
	// Stored, not compressed: the padding is random, and compressing it
	// (race-instrumented, in tests) takes a minute for nothing.
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarBytes), 0, int64(len(tarBytes))),
		estargz.WithCompressionLevel(gzip.NoCompression))
	if err != nil {
		return nil, nil, fmt.Errorf("estargz: %w", err)
	}
	defer blob.Close()
	gz, err := io.ReadAll(blob)
	if err != nil {
		return nil, nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(gz)), nil })
	if err != nil {
		return nil, nil, err
	}
	return l, map[string]string{
		estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
		estargz.StoreUncompressedSizeAnnotation: strconv.Itoa(len(tarBytes)),
	}, nil
}
