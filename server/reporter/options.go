package reporter

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// Defaults for Options.
const (
	DefaultInterval = 15 * time.Second
	// DefaultOrphanGraceIntervals is OrphanGrace's default, in heartbeat
	// intervals.
	DefaultOrphanGraceIntervals = 4
	DefaultRequestTimeout       = 10 * time.Second
	DefaultTerminateTimeout     = 10 * time.Second
	DefaultDataDir              = "/var/lib/containerd"
)

// Runtime is what the reporter asks of the container runtime;
// runtime.Runtime provides it.
type Runtime interface {
	List(ctx context.Context) ([]runtime.Instance, error)
	Info(ctx context.Context) (runtime.Info, error)
	Terminate(ctx context.Context, id string, timeout time.Duration) error
}

var _ Runtime = runtime.Runtime(nil)

// GPUs is what the reporter asks of the GPU inventory; *gpu.Inventory
// provides it.
type GPUs interface {
	GPUs() []gpu.GPU
	Usages() []gpu.Usage
	BestFree() []gpu.BestFree
	Topology() gpu.Topology
	Faults(instanceID string) []gpu.Fault
	DriverVersion() string
	CUDADriverVersion() string
}

var _ GPUs = (*gpu.Inventory)(nil)

// Options configure a Reporter. Only Runtime is always required; ServerURL,
// AgentID and Token are required together, and without ServerURL the
// Reporter is standalone.
type Options struct {
	// ServerURL is API_SERVER_URL, e.g. "https://api.example.com"; empty
	// means standalone: nothing is reported.
	ServerURL string
	// AgentID is AGENT_ID, the host's name in the server's API paths.
	AgentID string
	// Token is the agent's bearer token for the server.
	Token string
	// Version is the agent's version, reported and sent as User-Agent;
	// default "dev".
	Version string
	// Commit is the source revision the agent was built from, reported
	// with the version; empty when unknown.
	Commit string
	// Drain reads whether the host is drained, for the host report and the
	// heartbeat; nil: never drained.
	Drain DrainState
	// Sharing reports the rentals' share of memory and CPUs; nil: none
	// reported.
	Sharing Sharing
	// Usage meters the rentals for the heartbeat; nil: no usage reported.
	Usage UsageMeter
	// PublicURL is where the server reaches the agent's API
	// (AGENT_PUBLIC_URL), reported as is.
	PublicURL string
	// Interval between heartbeats; default 15s.
	Interval time.Duration
	// OrphanGrace is how long after its creation an instance is never
	// terminated as an orphan, however the server answers: the server may
	// not know yet of an instance it has just asked for. Default
	// DefaultOrphanGraceIntervals heartbeat intervals.
	OrphanGrace time.Duration
	// RequestTimeout bounds each HTTP call and each runtime query; default
	// 10s.
	RequestTimeout time.Duration
	// TerminateTimeout is the SIGTERM grace period of a termination the
	// server asked for; default 10s.
	TerminateTimeout time.Duration

	// Runtime lists the instances, names the runtime and terminates
	// orphans the server asks to be terminated.
	Runtime Runtime
	// GPUs is the NVML inventory; nil (or a nil *gpu.Inventory) is a host
	// without GPUs.
	GPUs GPUs
	// CDI says whether GPUs are injected through CDI; nil reports false.
	CDI func() bool
	// Network describes the rentals' network for the host report; nil:
	// rentals get none.
	Network func() *NetworkInfo
	// DiskLimit says how disk limits are enforced, for the host report;
	// nil: not reported.
	DiskLimit func() *DiskLimitInfo
	// DataDir is where the container runtime keeps its data, whose file
	// system's size is reported; default /var/lib/containerd.
	DataDir string
	// Root is where /proc and /etc are read from; default "/". Tests point
	// it at fixture files.
	Root string

	// Volumes lists the host's volumes for registrations and heartbeats;
	// nil: none reported.
	Volumes VolumeLister

	// Events receives instance.orphan and instance.missing events; may be
	// nil.
	Events events.Publisher
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// HTTPClient defaults to a client of its own; its own Timeout, if any,
	// applies on top of RequestTimeout. Whichever client, redirects are
	// never followed (see refuseRedirect): the reporter uses a copy whose
	// CheckRedirect refuses them.
	HTTPClient *http.Client
	// Backoff says how long to wait after failed calls.
	Backoff Backoff
	// Sleep waits d or until ctx is done, returning ctx's error then; it
	// paces heartbeats and retries. Default: a timer. Tests inject it to
	// record the waits and not spend them.
	Sleep func(ctx context.Context, d time.Duration) error
	// Now is the clock for timestamps; default time.Now.
	Now func() time.Time
	// ObserveHeartbeat, when set, is told the outcome of every round
	// (registration when due, then the heartbeat) as it ends: one of the
	// Heartbeat* results, and the time it ended. It runs on Run's
	// goroutine and must not block; the agent counts rounds with it for
	// its metrics.
	ObserveHeartbeat func(result string, at time.Time)
}

// Heartbeat results as ObserveHeartbeat receives them: a fixed set, one
// per way a round can end, so that they can label a metric.
const (
	HeartbeatOK = "ok"
	// HeartbeatUnreachable: no answer, or one that says to retry (5xx,
	// 408, 429).
	HeartbeatUnreachable = "unreachable"
	// HeartbeatUnauthorized: the server refused the agent's token (401,
	// 403).
	HeartbeatUnauthorized = "unauthorized"
	// HeartbeatRejected: the server refused the request itself (another
	// 4xx).
	HeartbeatRejected = "rejected"
	// HeartbeatUnknownAgent: the server does not know this agent (404 to
	// a heartbeat); the agent registers again.
	HeartbeatUnknownAgent = "unknown_agent"
)

// HeartbeatResults lists every result ObserveHeartbeat may receive.
var HeartbeatResults = []string{HeartbeatOK, HeartbeatUnreachable, HeartbeatUnauthorized, HeartbeatRejected, HeartbeatUnknownAgent}

// refuseRedirect keeps the token where API_SERVER_URL says. Go's client
// follows 307 and 308 by re-sending the body and, to the same host name on
// any port or scheme, the Authorization header: a server (or whoever can
// answer on its name) could steer the token to a plain-http port or to
// another service on that host. The redirect answer is returned as it is
// and the call fails with its status, naming the Location it asked for.
func refuseRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// withDefaults checks opts and fills in the defaults of its zero fields.
func (opts Options) withDefaults() (Options, error) {
	if opts.Runtime == nil {
		return opts, errdefs.ErrInvalidArgument.WithMessage("reporter: Runtime is required")
	}
	if opts.ServerURL != "" {
		u, err := url.Parse(opts.ServerURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return opts, errdefs.ErrInvalidArgument.WithMessage(fmt.Sprintf("reporter: server URL: want an http(s) URL, got %q", opts.ServerURL))
		}
		if opts.AgentID == "" {
			return opts, errdefs.ErrInvalidArgument.WithMessage("reporter: an agent ID is required to report to a server")
		}
		if opts.Token == "" {
			return opts, errdefs.ErrInvalidArgument.WithMessage("reporter: a token is required to report to a server")
		}
	}
	// A nil *gpu.Inventory in the interface would pass the nil checks and
	// then panic; it means "no GPUs" just as a nil interface does.
	if inv, ok := opts.GPUs.(*gpu.Inventory); ok && inv == nil {
		opts.GPUs = nil
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.OrphanGrace <= 0 {
		opts.OrphanGrace = DefaultOrphanGraceIntervals * opts.Interval
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.TerminateTimeout <= 0 {
		opts.TerminateTimeout = DefaultTerminateTimeout
	}
	if opts.DataDir == "" {
		opts.DataDir = DefaultDataDir
	}
	if opts.Root == "" {
		opts.Root = "/"
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{}
	}
	client := *opts.HTTPClient
	client.CheckRedirect = refuseRedirect
	opts.HTTPClient = &client
	if opts.Sleep == nil {
		opts.Sleep = sleepContext
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return opts, nil
}

// DrainState reads the host's drained state where the runtime keeps it;
// the containerd back end provides it.
type DrainState interface {
	Drained(ctx context.Context) (reason string, since time.Time, drained bool, err error)
}

// DrainInfo is the drained state as the host report and the heartbeat
// carry it: present only while the host takes no new rentals.
type DrainInfo struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// drainInfo reads the state; nil when not drained or unreadable (the
// caller names the error).
func (r *Reporter) drainInfo(ctx context.Context) (*DrainInfo, error) {
	if r.opts.Drain == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	defer cancel()
	reason, since, drained, err := r.opts.Drain.Drained(ctx)
	if err != nil || !drained {
		return nil, err
	}
	return &DrainInfo{Reason: reason, Since: since.UTC()}, nil
}
