package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"
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

// lazyPullWrapper is the image handler wrapper of r's snapshotter: for
// stargz, the labels that let it mount eStargz layers remotely; nil
// otherwise. A pull takes one wrapper (containerd keeps the last given),
// so concurrencyOpts chains it with its own.
func (r *Runtime) lazyPullWrapper(ref string) func(images.Handler) images.Handler {
	if r.opts.Snapshotter != StargzSnapshotter {
		return nil
	}
	return remoteSnapshotLabels(ref)
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

// errLayerNotLocal: a layer of an image is not in containerd's content
// store, as when a lazy snapshotter mounted it from the registry.
var errLayerNotLocal = errors.New("layer not in containerd's content store")

// rootFSReader is an image whose files can be read from its unpacked
// root file system when its layers are not in the content store.
type rootFSReader interface {
	readRootFSFiles(ctx context.Context, names ...string) (map[string][]byte, error)
}

// snapshotImage is an image on a lazy snapshotter: the agent reads its
// /etc/passwd (for USER and the SSH keys' place) from a read-only view of
// its snapshot, since its layers are fetched by the snapshotter, on
// demand, and never reach the content store.
type snapshotImage struct {
	containerd.Image
	sn snapshots.Snapshotter
}

// withRootFS gives img a way to its files through r's snapshotter when
// that snapshotter may have mounted it lazily.
func (r *Runtime) withRootFS(img containerd.Image) containerd.Image {
	if r.opts.Snapshotter != StargzSnapshotter {
		return img
	}
	return snapshotImage{Image: img, sn: r.client.SnapshotService(r.opts.Snapshotter)}
}

// readRootFSFiles reads the named files (relative to the root) from a
// read-only view of the image's snapshot, mounted for the while. Mounting
// needs the host's mount namespace and CAP_SYS_ADMIN, which the agent has
// when it runs on the host. Files that are missing or not regular are
// left out, as readImageFiles does.
func (i snapshotImage) readRootFSFiles(ctx context.Context, names ...string) (map[string][]byte, error) {
	diffIDs, err := i.RootFS(ctx)
	if err != nil {
		return nil, fmt.Errorf("image layers: %w", err)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	key := "host-agent-read-" + hex.EncodeToString(b[:])
	mounts, err := i.sn.View(ctx, key, identity.ChainID(diffIDs).String())
	if err != nil {
		return nil, fmt.Errorf("view the image's snapshot: %w", convertErr(err))
	}
	defer func() { _ = i.sn.Remove(context.WithoutCancel(ctx), key) }()
	found := map[string][]byte{}
	err = mount.WithReadonlyTempMount(ctx, mounts, func(root string) error {
		for _, name := range names {
			// Symbolic links resolve inside the image's root.
			p, err := fs.RootPath(root, name)
			if err != nil {
				return err
			}
			f, err := os.Open(p)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			fi, err := f.Stat()
			if err != nil || !fi.Mode().IsRegular() {
				f.Close()
				continue
			}
			content, err := io.ReadAll(io.LimitReader(f, maxImageFile+1))
			f.Close()
			if err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			if len(content) > maxImageFile {
				return fmt.Errorf("%s is over %d bytes", name, maxImageFile)
			}
			found[name] = content
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the image's files from its snapshot: %w", err)
	}
	return found, nil
}
