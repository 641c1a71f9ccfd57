package containerd

import (
	"context"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// A pull takes one handler wrapper: the lazy pull's labels must survive
// the layer limit's wrapper, or stargz fetches every layer in full.
func TestConcurrencyOptsKeepTheLazyPullWrapper(t *testing.T) {
	t.Parallel()
	wrapped := 0
	lazy := func(h images.Handler) images.Handler {
		return images.HandlerFunc(func(ctx context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			wrapped++
			return h.Handle(ctx, d)
		})
	}
	var rc containerd.RemoteContext
	for _, o := range concurrencyOpts(2, 0, lazy) {
		if err := o(nil, &rc); err != nil {
			t.Fatal(err)
		}
	}
	if rc.HandlerWrapper == nil {
		t.Fatal("no handler wrapper")
	}
	inner := images.HandlerFunc(func(context.Context, ocispec.Descriptor) ([]ocispec.Descriptor, error) { return nil, nil })
	h := rc.HandlerWrapper(inner)
	for _, mt := range []string{ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageLayerGzip} {
		if _, err := h.Handle(context.Background(), ocispec.Descriptor{MediaType: mt}); err != nil {
			t.Fatal(err)
		}
	}
	if wrapped != 2 {
		t.Errorf("the lazy pull's wrapper saw %d of 2 descriptors", wrapped)
	}
}
