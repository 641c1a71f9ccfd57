package containerd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/host-agent/host-agent/runtime/events"
)

// ensureImage returns the image, unpacked, pulling it when containerd does
// not have it yet.
func (r *Runtime) ensureImage(ctx context.Context, spec runtime.InstanceSpec) (containerd.Image, error) {
	return r.fetchImage(ctx, spec, func(ref string) {
		r.pub.Publish(events.Event{Type: events.TypeInstancePulling, InstanceID: spec.ID, Status: "pulling", Message: ref})
	}, func(p events.PullProgress) {
		r.pub.Publish(events.Event{Type: events.TypeInstancePullProgress, InstanceID: spec.ID, Status: "pulling", Progress: &p})
	})
}

// fetchImage is ensureImage telling pulling when a pull begins and
// progress how far it has come.
func (r *Runtime) fetchImage(ctx context.Context, spec runtime.InstanceSpec, pulling func(ref string), progress func(events.PullProgress)) (containerd.Image, error) {
	named, err := reference.ParseDockerRef(spec.Image)
	if err != nil {
		return nil, fmt.Errorf("parse image %q: %w: %w", spec.Image, errdefs.ErrInvalidArgument, err)
	}
	ref := named.String()
	host := reference.Domain(named)
	announced := false
	for {
		img, err := r.presentImage(ctx, ref, host, spec.RegistryAuth)
		if err != nil || img != nil {
			return img, err
		}
		if !announced {
			pulling(ref)
			announced = true
		}
		// A pull of the same image in flight is shared (backend.PullGroup):
		// the registry serves each blob once.
		decide, err := r.pulls.Do(ctx, ref, spec.RegistryAuth, progress, func(progress func(events.PullProgress)) error {
			img, err = r.pull(ctx, ref, host, spec.RegistryAuth, progress)
			return err
		})
		if err != nil {
			return nil, err
		}
		if !decide && img != nil {
			return img, nil
		}
		// Another pull brought the image, or ended: look again.
	}
}

// presentImage returns ref's image, unpacked, when containerd has it and the
// request may use it; nil when containerd does not have it.
func (r *Runtime) presentImage(ctx context.Context, ref, host string, auth *runtime.RegistryAuth) (containerd.Image, error) {
	img, err := r.client.GetImage(ctx, ref)
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, convertErr(err)
	}
	if img.Labels()[labelPulledWithAuth] != "" {
		// A private image is reused only by a request that may pull
		// it: the registry is asked, with the request's credentials.
		if err := r.checkAccess(ctx, ref, host, auth); err != nil {
			return nil, err
		}
	}
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

// pull fetches and unpacks ref, reporting its progress.
func (r *Runtime) pull(ctx context.Context, ref, host string, auth *runtime.RegistryAuth, progress func(events.PullProgress)) (containerd.Image, error) {
	ctx, cancelCause := context.WithCancelCause(ctx)
	defer cancelCause(nil)
	if r.opts.PullTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.opts.PullTimeout)
		defer cancel()
	}
	tracker := &pullTracker{}
	stop := backend.ReportProgress(ctx, r.opts.ProgressInterval, func(ctx context.Context) events.PullProgress {
		return r.pullProgress(ctx, tracker.layers())
	}, progress)
	defer stop()
	var received atomic.Int64
	stopWatch := r.watchStall(ctx, cancelCause, &received)
	defer stopWatch()
	pullOpts := []containerd.RemoteOpt{
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(r.opts.Snapshotter),
		containerd.WithResolver(r.resolver(ctx, auth, host, &received)),
		containerd.WithImageHandler(tracker),
	}
	if auth != nil {
		pullOpts = append(pullOpts, containerd.WithPullLabel(labelPulledWithAuth, "true"))
	}
	chunk := r.opts.PullChunkBytes
	img, err := r.client.Pull(ctx, ref, slices.Concat(pullOpts, concurrencyOpts(r.opts.PullLayers, chunk, r.lazyPullWrapper(ref)))...)
	if err != nil && chunk > 0 && rangeRefused(err) && ctx.Err() == nil {
		r.log.Warn("the registry refused a ranged fetch; pulling each layer over one connection", "image", ref, "error", err)
		img, err = r.client.Pull(ctx, ref, slices.Concat(pullOpts, concurrencyOpts(r.opts.PullLayers, 0, r.lazyPullWrapper(ref)))...)
	}
	if err != nil {
		err = pullError(ctx, ref, err)
		var pe *runtime.PullError
		if errors.As(err, &pe) && pe.Kind == runtime.PullDiskFull {
			r.abortIngests(tracker.layers())
		}
		return nil, err
	}
	return img, nil
}

// abortIngests drops what a pull wrote of layers it did not finish. A
// pull that filled the disk would otherwise keep it full: containerd keeps
// a partial layer to resume it, and every later pull fails for want of the
// space it holds.
func (r *Runtime) abortIngests(layers []ocispec.Descriptor) {
	ctx, cancel := r.cleanupCtx()
	defer cancel()
	cs := r.client.ContentStore()
	for _, d := range layers {
		if err := cs.Abort(ctx, remotes.MakeRefKey(ctx, d)); err != nil && !errdefs.IsNotFound(err) {
			r.log.Warn("drop the partial layer of a failed pull", "digest", d.Digest, "error", err)
		}
	}
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

// labelPulledWithAuth marks an image pulled with a request's credentials:
// before another request reuses it, the registry is asked whether that
// request's credentials may pull it.
const labelPulledWithAuth = "host-agent.io/pulled-with-auth"

// checkAccess asks the registry, with auth, for the manifest of ref (a HEAD,
// as Kubernetes does for images pulled with a secret), so that an image one
// tenant pulled with its credentials is not handed to another without them.
func (r *Runtime) checkAccess(ctx context.Context, ref, host string, auth *runtime.RegistryAuth) error {
	if auth == nil {
		return fmt.Errorf("image %s was pulled with credentials and this request has none: %w", ref, errdefs.ErrUnauthenticated)
	}
	ctx, cancel := context.WithTimeout(ctx, accessCheckTimeout)
	defer cancel()
	if _, _, err := newResolver(auth, host).Resolve(ctx, ref); err != nil {
		err = classifyPullErr(convertErr(err))
		if errdefs.IsUnauthorized(err) || errdefs.IsPermissionDenied(err) {
			return fmt.Errorf("check access to %s: %w", ref, err)
		}
		return fmt.Errorf("check access to %s (the image was pulled with credentials, and the registry must confirm these): %w", ref, err)
	}
	return nil
}

// accessCheckTimeout bounds checkAccess.
const accessCheckTimeout = 30 * time.Second

// newResolver resolves images over HTTPS, except on loopback registries,
// which are spoken to over plain HTTP as Docker does. Credentials go only to
// the image reference's own registry host, and to a token realm on that
// same host over HTTPS (plain HTTP on loopback): a registry cannot send them
// elsewhere with its authentication challenge.
func newResolver(auth *runtime.RegistryAuth, registryHost string) remotes.Resolver {
	return newCountingResolver(auth, registryHost, nil)
}

// newCountingResolver is newResolver adding every byte received from the
// registry to received (when not nil), which the stall watch reads.
func newCountingResolver(auth *runtime.RegistryAuth, registryHost string, received *atomic.Int64) remotes.Resolver {
	return newResolverWith(auth, registryHost, received, nil)
}

// newResolverWith is newCountingResolver with the provider's credentials
// file too.
func newResolverWith(auth *runtime.RegistryAuth, registryHost string, received *atomic.Int64, file AuthFile) remotes.Resolver {
	authOpts := []docker.AuthorizerOpt{}
	if auth != nil || len(file) > 0 {
		authOpts = append(authOpts,
			docker.WithAuthCreds(credentials(auth, registryHost, file)),
			docker.WithAuthClient(&http.Client{Transport: realmGuard{registry: registryHost, next: http.DefaultTransport}}))
	}
	hostOpts := []docker.RegistryOpt{
		docker.WithPlainHTTP(docker.MatchLocalhost),
		docker.WithAuthorizer(docker.NewDockerAuthorizer(authOpts...)),
	}
	if received != nil {
		hostOpts = append(hostOpts, docker.WithClient(&http.Client{Transport: countingTransport{next: http.DefaultTransport, n: received}}))
	}
	return docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(hostOpts...)})
}

// realmGuard carries the authorizer's token requests, which hold the
// credentials, and refuses those to a host other than the registry's or
// over plain HTTP to a host other than loopback.
type realmGuard struct {
	registry string
	next     http.RoundTripper
}

func (g realmGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if !sameRegistry(g.registry, req.URL.Host) {
		return nil, fmt.Errorf("registry %s names token realm %s on another host; its credentials are not sent there: %w",
			g.registry, req.URL.Host, errdefs.ErrPermissionDenied)
	}
	if req.URL.Scheme != "https" && !isLoopback(req.URL.Hostname()) {
		return nil, fmt.Errorf("registry %s names token realm %s over plain http; its credentials are not sent there: %w",
			g.registry, req.URL.Redacted(), errdefs.ErrPermissionDenied)
	}
	return g.next.RoundTrip(req)
}

// dockerHubHosts are the hosts Docker Hub's registry (docker.io) is served
// from, its token realm included.
var dockerHubHosts = map[string]bool{"docker.io": true, "registry-1.docker.io": true, "auth.docker.io": true}

// sameRegistry reports whether host (host[:port]) belongs to the registry of
// an image reference's domain: the same host name (ports may differ, as a
// token service next to the registry's has), or Docker Hub's own hosts.
func sameRegistry(registry, host string) bool {
	rh, hh := hostname(registry), hostname(host)
	if strings.EqualFold(rh, hh) {
		return true
	}
	return dockerHubHosts[strings.ToLower(rh)] && dockerHubHosts[strings.ToLower(hh)]
}

func hostname(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
