// Package docker runs rentals through the Docker Engine API, for hosts that
// give the agent a Docker socket and no containerd socket. It implements
// runtime.Runtime as a thin back end under lifecycle.Lifecycle, like the
// containerd back end: the same labels, the same confinement, GPUs by UUID
// only. cmd/ constructs it, internal/agent puts the lifecycle over it;
// server/ calls that through runtime.Runtime. What it shares with the
// containerd back end is in runtime/backend.
package docker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/host-agent/host-agent/runtime/events"
	rentalnet "github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/network/dockernet"
)

var _ runtime.Runtime = (*Runtime)(nil)

// DefaultHost is the Docker socket used when DOCKER_HOST is not set.
const DefaultHost = "unix:///var/run/docker.sock"

// NamePrefix starts the name of every rental's container: the name is the
// prefix and the instance ID, so that `docker ps` shows which rental a
// container is, and a rental cannot take the name of an operator's
// container (such as the agent's own, "host-agent").
const NamePrefix = "rental-"

// Options configure a Runtime.
type Options struct {
	// Host is the daemon's address (DOCKER_HOST; default DefaultHost).
	Host string
	// AgentID is written into every container's labels.
	AgentID string
	// StateDir keeps what Docker cannot hold in a container's labels,
	// which are fixed at creation: which exits were reported already,
	// and which images were pulled with a request's credentials.
	StateDir string
	Events   events.Publisher
	Logger   *slog.Logger
	// PullTimeout bounds one image pull (default 30 minutes).
	PullTimeout time.Duration
	// ProgressInterval is how often pull progress is published (default 1s).
	ProgressInterval time.Duration
	// ImageGCMinFreeBytes, when set with FreeSpace, has images removed
	// while FreeSpace reports less: those a rental pulled or used (the
	// daemon's other images are not the agent's), unused, unpinned, least
	// recently used first; checked every ImageGCInterval (default 1m).
	ImageGCMinFreeBytes uint64
	FreeSpace           func() (uint64, error)
	ImageGCInterval     time.Duration
	// DataRootFree, when FreeSpace is nil, measures the free space of the
	// daemon's data root (as its info names it) instead.
	DataRootFree func(dir string) (uint64, error)
	// LogMaxBytes caps each instance's log on disk (default 100 MiB),
	// through the log driver's rotation.
	LogMaxBytes int64
	// Network puts rentals on the agent's bridge network with published
	// ports and isolation rules; nil: rentals get no network (--network
	// none) and no ports.
	Network *NetworkOptions
	// Devices checks, with the same policy as on containerd (cdi.Injector),
	// the CDI specs the daemon injects GPUs from: a GPU rental is refused
	// unless the daemon reads CDI specs only from Devices' directories
	// and the plan for its GPUs passes. Nil: GPU rentals are refused.
	Devices DevicePlanner
	// Scope keeps a second user of the daemon's rentals apart (the
	// self-test's test rentals): its containers carry LabelScope and a name
	// of their own, and each back end sees, lists and reports the exits of
	// its own scope only. Empty: the agent's rentals.
	Scope string
}

// DevicePlanner checks the device plan of a rental's GPUs against the
// agent's policy, reading the CDI specs of SpecDirs; cdi.Injector provides
// it.
type DevicePlanner interface {
	Plan(uuids []string) (runtime.DevicePlan, error)
	SpecDirs() []string
}

// LabelScope marks a container of a back end with Options.Scope.
const LabelScope = runtime.LabelScope

// Runtime is the Docker back end.
type Runtime struct {
	opts   Options
	client *client.Client
	log    *slog.Logger
	pub    events.Publisher

	// raise says whether containers' limits can be raised (canRaise).
	raise *backend.RaiseProbe

	exitMu  sync.Mutex
	drainMu sync.Mutex
	// imageRecMu serialises the read-modify-write of image records.
	imageRecMu sync.Mutex
	// imageMu: image GC removes an image only while no start is between
	// its image and its container's creation.
	imageMu sync.RWMutex
	// pulls shares one pull among the pulls of an image.
	pulls backend.PullGroup
	// network is the rentals' network as the host sees it, and rules the
	// owner of its iptables rules; nil without a network.
	network *dockernet.Network
	rules   *rentalnet.Rules
	// storageSize says that rentals' disk limits are set as their
	// writable layer's size (DiskEnforcement).
	storageSize atomic.Bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closer backend.Closer
}

// New connects to the daemon (negotiating the API version, so that Docker
// 20.10's API 1.41 and current ones both answer) and starts following its
// events. It does not fail when the daemon is down: the watcher keeps
// reconnecting and Ping reports the outage.
func New(opts Options) (*Runtime, error) {
	if opts.Host == "" {
		opts.Host = DefaultHost
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.PullTimeout == 0 {
		opts.PullTimeout = 30 * time.Minute
	}
	if opts.ProgressInterval == 0 {
		opts.ProgressInterval = time.Second
	}
	if opts.LogMaxBytes <= 0 {
		opts.LogMaxBytes = 100 << 20
	}
	if opts.Events == nil {
		opts.Events = discard{}
	}
	if opts.Network != nil {
		n := *opts.Network
		if err := n.validate(); err != nil {
			return nil, err
		}
		opts.Network = &n
	}
	if !filepath.IsAbs(opts.StateDir) {
		return nil, fmt.Errorf("docker state dir %q must be absolute: %w", opts.StateDir, errdefs.ErrInvalidArgument)
	}
	for _, d := range []string{exitsDir, authPullsDir, imagesDir} {
		if err := os.MkdirAll(filepath.Join(opts.StateDir, d), 0o700); err != nil {
			return nil, fmt.Errorf("create docker state dir: %w", err)
		}
	}
	c, err := client.New(client.WithHost(opts.Host), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client for %s: %w: %w", opts.Host, errdefs.ErrInvalidArgument, err)
	}
	r := &Runtime{
		opts:   opts,
		client: c,
		log:    opts.Logger.With("runtime", "docker"),
		pub:    opts.Events,

		raise: backend.NewRaiseProbe(),
	}
	if opts.Network != nil {
		if r.network, err = dockernet.New(opts.Network.Config, r.log); err != nil {
			return nil, fmt.Errorf("docker network: %w", err)
		}
		r.rules = r.network.Rules()
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Go(func() { r.watch(r.ctx) })
	if r.opts.FreeSpace == nil && r.opts.DataRootFree != nil {
		r.opts.FreeSpace = r.dataRootFree
	}
	if opts.ImageGCMinFreeBytes > 0 && r.opts.FreeSpace != nil {
		r.wg.Go(func() { r.collectImagesLoop(r.ctx) })
	}
	return r, nil
}

// Close stops watching and closes the connection. Containers keep running.
func (r *Runtime) Close() error {
	return r.closer.Close(r.cancel, &r.wg, r.client)
}

// Ping reports whether the daemon answers.
func (r *Runtime) Ping(ctx context.Context) error {
	if _, err := r.client.Ping(ctx, client.PingOptions{}); err != nil {
		return fmt.Errorf("docker at %s: %w", r.opts.Host, convertErr(err))
	}
	return nil
}

// Info names Docker, its version and API version.
func (r *Runtime) Info(ctx context.Context) (runtime.Info, error) {
	v, err := r.client.ServerVersion(ctx, client.ServerVersionOptions{})
	if err != nil {
		return runtime.Info{}, convertErr(err)
	}
	return runtime.Info{Name: "docker", Version: v.Version + " (API " + r.client.ClientVersion() + ")"}, nil
}

// containerName is the name of an instance's container.
func (r *Runtime) containerName(id string) string {
	if r.opts.Scope != "" {
		return NamePrefix + r.opts.Scope + "-" + id
	}
	return NamePrefix + id
}

// ours says whether a container with labels is a rental of this back
// end's scope.
func (r *Runtime) ours(labels map[string]string) bool {
	return labels[runtime.LabelInstanceID] != "" && labels[LabelScope] == r.opts.Scope
}

// convertErr gives a daemon that cannot be reached the Unavailable kind;
// the client already classifies the daemon's answers by errdefs kind.
func convertErr(err error) error {
	if err == nil {
		return nil
	}
	if client.IsErrConnectionFailed(err) {
		return fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
	}
	// runc refusing a limit it cannot raise: the host cannot run the
	// request (409 naming the limit), not an internal error.
	return runtime.RlimitRefused(err)
}

func notFound(id string) error {
	return fmt.Errorf("instance %q: %w", id, errdefs.ErrNotFound)
}

type discard struct{}

func (discard) Publish(events.Event) {}
