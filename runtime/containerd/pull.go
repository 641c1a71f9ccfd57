package containerd

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteserrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// ensureImage returns the image, unpacked, pulling it when containerd does
// not have it yet.
func (r *Runtime) ensureImage(ctx context.Context, spec runtime.InstanceSpec) (containerd.Image, error) {
	named, err := reference.ParseDockerRef(spec.Image)
	if err != nil {
		return nil, fmt.Errorf("parse image %q: %w: %w", spec.Image, errdefs.ErrInvalidArgument, err)
	}
	ref := named.String()
	img, err := r.client.GetImage(ctx, ref)
	if err == nil {
		unpacked, err := img.IsUnpacked(ctx, r.opts.Snapshotter)
		if err != nil {
			return nil, convertErr(err)
		}
		if !unpacked {
			if err := img.Unpack(ctx, r.opts.Snapshotter); err != nil {
				return nil, fmt.Errorf("unpack %s: %w", ref, convertErr(err))
			}
		}
		return img, nil
	}
	if !errdefs.IsNotFound(err) {
		return nil, convertErr(err)
	}

	r.pub.Publish(events.Event{Type: events.TypeInstancePulling, InstanceID: spec.ID, Status: "pulling", Message: ref})
	ctx, cancel := context.WithTimeout(ctx, r.opts.PullTimeout)
	defer cancel()
	tracker := &pullTracker{}
	stop := r.reportProgress(ctx, spec.ID, tracker)
	defer stop()
	img, err = r.client.Pull(ctx, ref,
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(r.opts.Snapshotter),
		containerd.WithResolver(newResolver(spec.RegistryAuth)),
		containerd.WithImageHandler(tracker))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, classifyPullErr(convertErr(err)))
	}
	return img, nil
}

// classifyPullErr gives a registry's refusal of access a kind of its own:
// it is about the request's credentials, not about the agent or the
// registry's health.
func classifyPullErr(err error) error {
	var status remoteserrors.ErrUnexpectedStatus
	if errors.As(err, &status) {
		switch status.StatusCode {
		case http.StatusUnauthorized:
			return fmt.Errorf("registry refused the credentials: %w: %w", errdefs.ErrUnauthenticated, err)
		case http.StatusForbidden:
			return fmt.Errorf("registry denied access: %w: %w", errdefs.ErrPermissionDenied, err)
		}
	}
	return err
}

// newResolver resolves images over HTTPS, except on loopback registries,
// which are spoken to over plain HTTP as Docker does.
func newResolver(auth *runtime.RegistryAuth) remotes.Resolver {
	authOpts := []docker.AuthorizerOpt{}
	if auth != nil {
		user, pass := auth.Username, auth.Password
		authOpts = append(authOpts, docker.WithAuthCreds(func(string) (string, string, error) {
			return user, pass, nil
		}))
	}
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(
			docker.WithPlainHTTP(docker.MatchLocalhost),
			docker.WithAuthorizer(docker.NewDockerAuthorizer(authOpts...)),
		),
	})
}

// pullTracker records the layers a pull fetches so that their progress can be
// read from the content store.
type pullTracker struct {
	mu    sync.Mutex
	descs map[digest.Digest]ocispec.Descriptor
}

// Handle implements images.Handler.
func (t *pullTracker) Handle(_ context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	if images.IsLayerType(desc.MediaType) {
		t.mu.Lock()
		if t.descs == nil {
			t.descs = map[digest.Digest]ocispec.Descriptor{}
		}
		t.descs[desc.Digest] = desc
		t.mu.Unlock()
	}
	return nil, nil
}

func (t *pullTracker) layers() []ocispec.Descriptor {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]ocispec.Descriptor, 0, len(t.descs))
	for _, d := range t.descs {
		out = append(out, d)
	}
	return out
}

// reportProgress publishes, every progressInterval, how many layer bytes the
// pull has fetched. The returned function stops it.
func (r *Runtime) reportProgress(ctx context.Context, id string, t *pullTracker) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(r.opts.ProgressInterval)
		defer tick.Stop()
		var last events.PullProgress
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			p := r.pullProgress(ctx, t.layers())
			if p.TotalBytes == 0 || p == last {
				continue
			}
			last = p
			r.pub.Publish(events.Event{Type: events.TypeInstancePullProgress, InstanceID: id, Status: "pulling", Progress: &p})
		}
	}()
	return func() { cancel(); <-done }
}

func (r *Runtime) pullProgress(ctx context.Context, layers []ocispec.Descriptor) events.PullProgress {
	cs := r.client.ContentStore()
	var p events.PullProgress
	for _, d := range layers {
		p.TotalBytes += d.Size
		if _, err := cs.Info(ctx, d.Digest); err == nil {
			p.DoneBytes += d.Size
			continue
		}
		if st, err := cs.Status(ctx, remotes.MakeRefKey(ctx, d)); err == nil {
			p.DoneBytes += st.Offset
		}
	}
	return p
}
