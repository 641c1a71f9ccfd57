// Package containerd runs rentals directly on containerd through its socket,
// without dockerd, in a namespace of their own. It implements
// runtime.Runtime; cmd/ constructs it, internal/agent puts the lifecycle
// over it, and server/ calls that through the interface. What it shares
// with the Docker back end is in runtime/backend.
package containerd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	ctrevents "github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
	"github.com/host-agent/host-agent/runtime/events"
)

// RuncRuntime is the only OCI runtime tenants' containers run under.
const RuncRuntime = "io.containerd.runc.v2"

// DefaultResyncInterval is Options.ResyncInterval's default.
const DefaultResyncInterval = 30 * time.Second

var _ runtime.Runtime = (*Runtime)(nil)

// Options configure a Runtime.
type Options struct {
	// Address is containerd's socket.
	Address string
	// Namespace isolates the rentals from everything else on containerd.
	Namespace string
	// AgentID is written into every container's labels.
	AgentID string
	// LogDir holds one output file per instance, written by the shim.
	LogDir string
	// Snapshotter overrides containerd's default snapshotter when set
	// (SNAPSHOTTER); StargzSnapshotter also pulls eStargz images lazily.
	Snapshotter string
	// Events receives instance state changes.
	Events events.Publisher
	Logger *slog.Logger
	// PullTimeout, when set, bounds one image pull; by default a pull is
	// bounded only by PullStallTimeout, so that a large image on a slow
	// link finishes.
	PullTimeout time.Duration
	// PullStallTimeout fails a pull that fetched nothing for that long
	// (default DefaultPullStallTimeout).
	PullStallTimeout time.Duration
	// PullLayers is how many layers one pull fetches at once and, when
	// layers are fetched in ranges, how many ranges of one layer (default
	// DefaultPullLayers).
	PullLayers int
	// PullChunkBytes, when above zero, is the size of the ranges a layer
	// bigger than it is fetched in, over PullLayers connections at once;
	// otherwise each layer comes over one connection.
	PullChunkBytes int64
	// RegistryConfigDir holds the provider's registry configuration,
	// <dir>/<host>/hosts.toml, as containerd reads it (default
	// DefaultCertsDir): mirrors and certificates.
	RegistryConfigDir string
	// RegistryAuthFile are the provider's registry credentials, from a
	// Docker config.json (REGISTRY_AUTH_FILE); a request's own
	// registry_auth wins for its image's registry.
	RegistryAuthFile AuthFile
	// ImageGCMinFreeBytes, when set with FreeSpace, has unused images
	// removed, least recently used first, while FreeSpace reports less;
	// checked every ImageGCInterval (default 1m).
	ImageGCMinFreeBytes uint64
	FreeSpace           func() (uint64, error)
	ImageGCInterval     time.Duration
	// ProgressInterval is how often pull progress is published (default 1s).
	ProgressInterval time.Duration
	// LogMaxBytes caps each instance's log on disk (default 100 MiB; below
	// zero: no cap); the oldest output goes first. LogCheckInterval is how
	// often the logs are checked (default 30s).
	LogMaxBytes      int64
	LogCheckInterval time.Duration
	// Devices injects an instance's GPUs into its spec (CDI). Without it,
	// GPU rentals are refused.
	Devices DeviceInjector
	// Network gives each rental its network namespace, address, published
	// ports and resolv.conf. Without it rentals get an empty network
	// namespace and starts that publish ports are refused.
	Network Network
	// PublicIP is the host's public address, announced to tenants as
	// PUBLIC_IP; empty: not announced.
	PublicIP string
	// ResyncInterval is how often the task cache is checked against
	// containerd's own listing, and exits the event stream missed are
	// reported (default DefaultResyncInterval).
	ResyncInterval time.Duration
	// Fault, when set, is called at each named step of a start and a
	// terminate (see fault.go); the fault-matrix tests make the agent kill
	// itself there. Nil in production.
	Fault func(step string)

	// subscribe, when set, replaces the client's Subscribe: tests delay
	// the subscription or lose its events.
	subscribe func(ctx context.Context, filters ...string) (<-chan *ctrevents.Envelope, <-chan error)
}

// DeviceInjector turns the UUIDs of the GPUs reserved for an instance
// (none for a CPU rental) into the device plan that gives the container
// exactly those devices; cdi.Injector provides it. The back end applies the
// plan after every other option and verifies the final spec against it.
type DeviceInjector interface {
	Plan(uuids []string) (runtime.DevicePlan, error)
}

// Runtime is the containerd back end.
type Runtime struct {
	opts   Options
	client *containerd.Client
	log    *slog.Logger
	pub    events.Publisher

	// raise says whether containers' limits can be raised (canRaise).
	raise *backend.RaiseProbe

	// imageMu: image GC removes an image only while no start is between
	// choosing its image and creating its container.
	imageMu sync.RWMutex
	// pulls shares one fetch among the pulls of an image.
	pulls backend.PullGroup

	// exits serialises the recording of one instance's exit or OOM kill.
	exits backend.KeyedMutex
	// tasks is the namespace's task state, kept by the watcher for List;
	// taskLists counts the Lists that had to ask containerd instead.
	tasks     taskCache
	taskLists atomic.Int64
	// startLeases are the leases of the starts in progress.
	startLeases leaseSet
	// calls times the calls to containerd (Collector).
	calls *prometheus.HistogramVec
	probe probe
	// appArmor is the AppArmor profile of rentals, "" where the host has
	// none (loadAppArmor).
	appArmor string
	// runcBinary overrides the shim's runc ("" is runc from containerd's
	// PATH); tests point it at a missing one.
	runcBinary string

	ctx    context.Context // lives until Close; carries the namespace
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closer backend.Closer
}

// New connects to containerd and starts watching the namespace for exits. It
// does not fail when containerd is down: the watcher keeps reconnecting and
// Ping reports the outage.
func New(opts Options) (*Runtime, error) {
	if opts.Namespace == "" {
		return nil, fmt.Errorf("containerd namespace is empty: %w", errdefs.ErrInvalidArgument)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.PullStallTimeout <= 0 {
		opts.PullStallTimeout = DefaultPullStallTimeout
	}
	if opts.ProgressInterval == 0 {
		opts.ProgressInterval = time.Second
	}
	if opts.PullLayers <= 0 {
		opts.PullLayers = DefaultPullLayers
	}

	if opts.LogMaxBytes == 0 {
		opts.LogMaxBytes = 100 << 20
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = DefaultResyncInterval
	}
	if opts.LogCheckInterval == 0 {
		opts.LogCheckInterval = 30 * time.Second
	}
	if opts.Events == nil {
		opts.Events = discard{}
	}
	if !filepath.IsAbs(opts.LogDir) {
		return nil, fmt.Errorf("log dir %q must be absolute: the shim opens it: %w", opts.LogDir, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(opts.LogDir, 0o700); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	calls := newCallHistogram()
	c, err := containerd.New(opts.Address,
		containerd.WithDefaultNamespace(opts.Namespace),
		containerd.WithDefaultRuntime(RuncRuntime),
		containerd.WithExtraDialOpts([]grpc.DialOption{grpc.WithChainUnaryInterceptor(TimeCalls(calls))}))
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w", opts.Address, err)
	}
	r := &Runtime{
		opts:   opts,
		client: c,
		log:    opts.Logger.With("runtime", "containerd", "namespace", opts.Namespace),
		pub:    opts.Events,
		calls:  calls,

		raise: backend.NewRaiseProbe(),
	}
	r.appArmor = loadAppArmor(r.log)
	r.ctx, r.cancel = context.WithCancel(namespaces.WithNamespace(context.Background(), opts.Namespace))
	r.wg.Go(func() { r.watch(r.ctx) })
	if opts.LogMaxBytes > 0 {
		r.wg.Go(func() { r.capLogs(r.ctx) })
	}
	if opts.ImageGCMinFreeBytes > 0 && opts.FreeSpace != nil {
		r.wg.Go(func() { r.collectImagesLoop(r.ctx) })
	}
	return r, nil
}

// Close stops watching and closes the connection. Containers keep running.
func (r *Runtime) Close() error {
	// Exit recordings in flight finish first: they run detached from the
	// cancelled context, on the still open connection.
	return r.closer.Close(r.cancel, &r.wg, r.client)
}

// Ping reports whether containerd answers and can run a container (a
// cached check: see canRun).
func (r *Runtime) Ping(ctx context.Context) error {
	if _, err := r.client.Version(ctx); err != nil {
		return fmt.Errorf("containerd at %s: %w", r.opts.Address, convertErr(err))
	}
	if err := r.CheckSnapshotter(ctx); err != nil {
		return err
	}
	return r.canRun(ctx)
}

// Info names containerd and its version.
func (r *Runtime) Info(ctx context.Context) (runtime.Info, error) {
	v, err := r.client.Version(ctx)
	if err != nil {
		return runtime.Info{}, convertErr(err)
	}
	return runtime.Info{Name: "containerd", Version: v.Version, Namespace: r.opts.Namespace}, nil
}

func (r *Runtime) nsCtx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.opts.Namespace)
}

func (r *Runtime) logPath(id string) string {
	return filepath.Join(r.opts.LogDir, id+".log")
}

type discard struct{}

func (discard) Publish(events.Event) {}
