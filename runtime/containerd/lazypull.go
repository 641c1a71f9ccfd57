package containerd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// StargzSnapshotter is the name under which containerd reaches
// stargz-snapshotter (a proxy plugin, deploy/setup-host.sh --lazy-pull).
// With it, the layers of eStargz images are mounted from the registry and
// read on demand: a rental starts before its image is fetched. Other
// images are fetched and unpacked in full, as with overlayfs.
const StargzSnapshotter = "stargz"

// The labels stargz-snapshotter reads from a layer's snapshot to mount it
// from the registry: stargz-snapshotter's fs/source
// (AppendDefaultLabelsHandlerWrapper), written here so that the agent does
// not link the snapshotter.
const (
	remoteRefLabel          = "containerd.io/snapshot/remote/stargz.reference"
	remoteDigestLabel       = "containerd.io/snapshot/remote/stargz.digest"
	remoteLayersLabel       = "containerd.io/snapshot/remote/stargz.layers"
	remoteURLsLabel         = "containerd.io/snapshot/remote/urls"
	remoteLayerURLsPrefix   = "containerd.io/snapshot/remote/urls."
	remotePrefetchSizeLabel = "containerd.io/snapshot/remote/stargz.prefetch"
)

// lazyPullOpts are the pull options of r's snapshotter: for stargz, the
// layers of the image carry the labels that let the snapshotter mount
// them from the registry instead of containerd fetching them.
func (r *Runtime) lazyPullOpts(ref string) []containerd.RemoteOpt {
	if r.opts.Snapshotter != StargzSnapshotter {
		return nil
	}
	return []containerd.RemoteOpt{containerd.WithImageHandlerWrapper(remoteSnapshotLabels(ref))}
}

// remoteSnapshotLabels annotates the layers of every manifest the pull
// walks with the labels stargz-snapshotter reads; containerd's unpacker
// hands a layer's containerd.io/snapshot/ annotations to the snapshotter
// as labels, and skips fetching a layer the snapshotter mounted remotely.
func remoteSnapshotLabels(ref string) func(images.Handler) images.Handler {
	return func(f images.Handler) images.Handler {
		return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			children, err := f.Handle(ctx, desc)
			if err != nil {
				return nil, err
			}
			switch desc.MediaType {
			case ocispec.MediaTypeImageManifest, images.MediaTypeDockerSchema2Manifest:
			default:
				return children, nil
			}
			for i := range children {
				c := &children[i]
				if !images.IsLayerType(c.MediaType) {
					continue
				}
				if c.Annotations == nil {
					c.Annotations = map[string]string{}
				}
				c.Annotations[remoteRefLabel] = ref
				c.Annotations[remoteDigestLabel] = c.Digest.String()
				// This layer and the ones above it, as many as a label
				// holds: the snapshotter prefetches its neighbours.
				var layers string
				for j, l := range children[i:] {
					if !images.IsLayerType(l.MediaType) {
						continue
					}
					next := layers + l.Digest.String() + ","
					if labels.Validate(remoteLayersLabel, next) != nil {
						break
					}
					layers = next
					key := remoteLayerURLsPrefix + strconv.Itoa(j)
					c.Annotations[key] = joinWithin(key, l.URLs)
				}
				c.Annotations[remoteLayersLabel] = strings.TrimSuffix(layers, ",")
				c.Annotations[remotePrefetchSizeLabel] = "0"
				c.Annotations[remoteURLsLabel] = joinWithin(remoteURLsLabel, c.URLs)
			}
			return children, nil
		})
	}
}

// joinWithin joins values with commas, as many as a label of that key
// holds.
func joinWithin(key string, values []string) string {
	var v string
	for _, u := range values {
		next := v + u + ","
		if labels.Validate(key, next) != nil {
			break
		}
		v = next
	}
	return strings.TrimSuffix(v, ",")
}

// ErrSnapshotterMissing is the kind of CheckSnapshotter's answer when
// containerd has no snapshotter of the configured name, or it does not
// answer.
var ErrSnapshotterMissing = errors.New("snapshotter unavailable")

// CheckSnapshotter says whether containerd reaches the snapshotter
// rentals are configured to use (SNAPSHOTTER); nil when none is
// configured (containerd's default). A proxy snapshotter whose daemon is
// down fails here, not at the first start.
func (r *Runtime) CheckSnapshotter(ctx context.Context) error {
	name := r.opts.Snapshotter
	if name == "" {
		return nil
	}
	// A key no snapshot has: a snapshotter that answers says NotFound.
	_, err := r.client.SnapshotService(name).Stat(r.nsCtx(ctx), "host-agent-snapshotter-check")
	if err == nil || errdefs.IsNotFound(convertErr(err)) {
		return nil
	}
	err = convertErr(err)
	fix := "check containerd's configuration"
	if name == StargzSnapshotter {
		fix = "run deploy/setup-host.sh --lazy-pull (it installs containerd-stargz-grpc and containerd's proxy_plugins entry), or unset SNAPSHOTTER"
	}
	return fmt.Errorf("%w: containerd at %s cannot use snapshotter %q (%v): %s", ErrSnapshotterMissing, r.opts.Address, name, err, fix)
}
