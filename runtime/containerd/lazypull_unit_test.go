package containerd

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Each layer of a manifest gets the labels stargz-snapshotter mounts it
// by; the config and the manifest's other children get none.
func TestRemoteSnapshotLabels(t *testing.T) {
	t.Parallel()
	layer := func(s string) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString(s)}
	}
	cfg := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("config")}
	children := []ocispec.Descriptor{cfg, layer("a"), layer("b")}
	children[2].URLs = []string{"https://mirror.example/b"}
	inner := images.HandlerFunc(func(context.Context, ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		return children, nil
	})
	const ref = "registry.example/team/image:tag"
	h := remoteSnapshotLabels(ref)(inner)

	got, err := h.Handle(context.Background(), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest})
	if err != nil {
		t.Fatal(err)
	}
	if len(got[0].Annotations) != 0 {
		t.Errorf("config annotated: %v", got[0].Annotations)
	}
	a, b := got[1].Annotations, got[2].Annotations
	for _, c := range []struct{ key, got, want string }{
		{remoteRefLabel, a[remoteRefLabel], ref},
		{remoteDigestLabel, a[remoteDigestLabel], children[1].Digest.String()},
		{remoteLayersLabel, a[remoteLayersLabel], children[1].Digest.String() + "," + children[2].Digest.String()},
		{remoteDigestLabel + " of b", b[remoteDigestLabel], children[2].Digest.String()},
		{remoteLayersLabel + " of b", b[remoteLayersLabel], children[2].Digest.String()},
		{remoteURLsLabel + " of b", b[remoteURLsLabel], "https://mirror.example/b"},
		{remoteLayerURLsPrefix + "1 of a", a[remoteLayerURLsPrefix+"1"], "https://mirror.example/b"},
		{remotePrefetchSizeLabel, a[remotePrefetchSizeLabel], "0"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.key, c.got, c.want)
		}
	}
	for k := range a {
		if !strings.HasPrefix(k, "containerd.io/snapshot/") {
			t.Errorf("label %s would not reach the snapshotter (containerd passes on containerd.io/snapshot/ only)", k)
		}
	}

	// An index's children are manifests: left alone.
	got, err = h.Handle(context.Background(), ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range got {
		if _, ok := c.Annotations[remoteRefLabel]; ok && c.MediaType == ocispec.MediaTypeImageConfig {
			t.Errorf("child of an index annotated: %v", c)
		}
	}
}

// The list of neighbouring layers stops where a label must end (4 KiB).
func TestRemoteSnapshotLabelsManyLayers(t *testing.T) {
	t.Parallel()
	var children []ocispec.Descriptor
	for i := range 200 {
		children = append(children, ocispec.Descriptor{MediaType: images.MediaTypeDockerSchema2LayerGzip, Digest: digest.FromString(strings.Repeat("x", i))})
	}
	inner := images.HandlerFunc(func(context.Context, ocispec.Descriptor) ([]ocispec.Descriptor, error) { return children, nil })
	got, err := remoteSnapshotLabels("r/i:t")(inner).Handle(context.Background(), ocispec.Descriptor{MediaType: images.MediaTypeDockerSchema2Manifest})
	if err != nil {
		t.Fatal(err)
	}
	layers := got[0].Annotations[remoteLayersLabel]
	if n := len(remoteLayersLabel) + len(layers); n > 4096 {
		t.Errorf("layers label is %d bytes with its key, over containerd's 4096", n)
	}
	if !strings.HasPrefix(layers, children[0].Digest.String()+",") || strings.HasSuffix(layers, ",") {
		t.Errorf("layers label = %.80q...", layers)
	}
}
