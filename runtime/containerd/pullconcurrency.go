package containerd

import (
	"context"
	"errors"
	"net/http"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	remoteserrors "github.com/containerd/containerd/v2/core/remotes/errors"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/semaphore"
)

// DefaultPullLayers is how many layers a pull fetches at once, chosen by
// measurement (BENCHMARKS.md, big images): a registry behind a CDN serves
// each connection at a bounded rate, and a 2 GiB image of 8 layers started
// in 14 s with 8 layers at once, 24 s with 4 and 33 s through ctr (the
// transfer service's 3). Ranges of one layer (PullChunkBytes) are off by
// default: they cost the agent up to layers × layers × chunk bytes of
// memory and, in 16 MiB chunks, were slower than one connection a layer.
const DefaultPullLayers = 8

// concurrencyOpts are the pull options that fetch up to layers layers at
// once and, when chunk is above zero, each layer bigger than chunk in
// ranges of chunk bytes, layers at once. Layers are unpacked as they
// arrive, in order, while later ones are still fetched. wrap, when not
// nil, is another image handler wrapper the pull needs (the lazy pull's
// labels), chained with this one's.
func concurrencyOpts(layers int, chunk int64, wrap func(images.Handler) images.Handler) []containerd.RemoteOpt {
	limit := limitLayers(semaphore.NewWeighted(int64(layers)))
	wrapper := limit
	if wrap != nil {
		// Both: containerd keeps only the last wrapper it is given.
		wrapper = func(h images.Handler) images.Handler { return limit(wrap(h)) }
	}
	opts := []containerd.RemoteOpt{
		containerd.WithMaxConcurrentDownloads(layers),
		containerd.WithImageHandlerWrapper(wrapper),
	}
	if chunk > 0 {
		opts = append(opts, containerd.WithConcurrentLayerFetchBuffer(int(chunk)))
	}
	return opts
}

// limitLayers lets at most sem's weight of layers be fetched at once: the
// unpacker otherwise starts every layer's fetch together, and each takes
// its own connections.
func limitLayers(sem *semaphore.Weighted) func(images.Handler) images.Handler {
	return func(h images.Handler) images.Handler {
		return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			if !images.IsLayerType(desc.MediaType) {
				return h.Handle(ctx, desc)
			}
			if err := sem.Acquire(ctx, 1); err != nil {
				return nil, err
			}
			defer sem.Release(1)
			return h.Handle(ctx, desc)
		})
	}
}

// rangeRefused says whether err is a registry's refusal of a ranged fetch
// (416): some registries do not serve a range without an end, which is how
// containerd asks for a layer it fetches in ranges.
func rangeRefused(err error) bool {
	var status remoteserrors.ErrUnexpectedStatus
	return errors.As(err, &status) && status.StatusCode == http.StatusRequestedRangeNotSatisfiable
}
