// Package server is the agent's REST and WebSocket API, served with Echo v5:
// the central server starts and terminates rentals through it, reads them back
// and follows their events on GET /ws. Handlers bind and validate a request
// struct, convert it into a runtime spec and call runtime.Runtime; nothing
// else in the agent imports echo. cmd/ builds a Server and serves its Handler.
package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/server/reporter"
)

// Defaults for Options left zero.
const (
	DefaultPingInterval       = 30 * time.Second
	DefaultStopTimeout        = 10 * time.Second
	defaultShutdownTimeout    = 10 * time.Second
	defaultReadHeaderTimeout  = 10 * time.Second
	defaultIdleTimeout        = 2 * time.Minute
	defaultBodyTimeout        = 30 * time.Second
	defaultMaxConnections     = 512
	readinessTimeout          = 2 * time.Second
	maxStopTimeoutSeconds     = 3600
	maxBodyBytes              = 1 << 20
	healthPath, readinessPath = "/healthz", "/readyz"
	metricsPath               = "/metrics"
)

// Options are a Server's dependencies and settings.
type Options struct {
	// Runtime runs the rentals. Required.
	Runtime runtime.Runtime
	// MockFaults, set on a mock GPU host only, serves
	// POST /mock/gpus/{index}/faults; without it that route answers 404.
	MockFaults MockFaultInjector
	// RuntimeName names it in GET /readyz (default "containerd").
	RuntimeName string
	// Hub feeds GET /ws. Required.
	Hub *events.Hub
	// Token is the bearer token every route but the health checks demands.
	// Required: the agent never serves its API unauthenticated.
	Token string
	// MetricsToken, when set, is a second bearer token that GET /metrics
	// accepts and every other route refuses, so that a Prometheus server
	// can scrape the agent without holding the token that starts
	// containers. Token is accepted on GET /metrics as well.
	MetricsToken string
	// Version and Commit label host_agent_build_info.
	Version string
	Commit  string
	// AgentID names this agent in logs and in GET /healthz.
	AgentID string
	// Logger receives request logs and the causes of failed requests
	// (slog.Default() when nil).
	Logger *slog.Logger
	// PingInterval is how often a WebSocket client is pinged. Default 30s.
	PingInterval time.Duration
	// PongWait is how long a WebSocket client may go without answering a
	// ping (or sending anything) before it is disconnected. Default twice
	// PingInterval; never less than PingInterval.
	PongWait time.Duration
	// DefaultStopTimeout is how long terminate waits after SIGTERM when the
	// request names no timeout. Default 10s.
	DefaultStopTimeout time.Duration
	// GPUs feeds GET /gpus; nil serves a host without GPUs.
	GPUs GPUInventory
	// Usage meters the rentals for GET /instances; nil: no usage answered.
	Usage UsageMeter
	// Host feeds GET /host; nil answers 503.
	Host HostReporter

	// ReadHeaderTimeout bounds reading a request's headers (default 10s),
	// BodyTimeout reading its body (default 30s), IdleTimeout how long a
	// kept-alive connection waits for the next request (default 2m). A
	// client trickling its request is cut off when they pass. Handlers
	// themselves are not bounded (a start may pull for minutes) and
	// neither is a WebSocket stream, which keeps its own deadlines.
	ReadHeaderTimeout time.Duration
	BodyTimeout       time.Duration
	IdleTimeout       time.Duration
	// MaxConnections caps the connections served at once, WebSocket
	// streams included (default 512); further ones wait to be accepted.
	MaxConnections int
	// Drain keeps the drained state (POST /drain, POST /undrain); nil: the
	// host is never drained and those routes answer 501.
	Drain Drainer
	// Pulls, when the runtime publishes through it, feeds the image pull
	// duration histogram of GET /metrics.
	Pulls *PullTimer
	// Network, when set, is checked by GET /readyz: a host whose rentals
	// cannot be given a network (a CNI plugin missing, the agent's rules
	// flushed) is not ready.
	Network NetworkChecker
	// Collectors are more metrics for GET /metrics, such as the runtime
	// back end's.
	Collectors []prometheus.Collector
	// Volumes keeps the host's volumes (POST, GET /volumes, DELETE
	// /volumes/{name}); nil: those routes answer 501.
	Volumes VolumeStore
}

// NetworkChecker says why rentals cannot be given a network now;
// network.Network provides it.
type NetworkChecker interface {
	Check(ctx context.Context) error
}

// HostReporter describes the host as the central server is told about it;
// reporter.Reporter provides it.
type HostReporter interface {
	Collect(ctx context.Context) (reporter.HostReport, error)
}

// GPUInventory is what GET /gpus shows; gpu.Inventory provides it.
type GPUInventory interface {
	GPUs() []gpu.GPU
	Topology() gpu.Topology
	BestFree() []gpu.BestFree
	Faults(instanceID string) []gpu.Fault
	DriverVersion() string
	CUDADriverVersion() string
}

// connLimits are what Serve bounds each connection by (see Options).
type connLimits struct {
	readHeader, body, idle time.Duration
	maxConns               int
}

// Route is one method and path the API serves, with path parameters written
// Echo's way (/instances/:id).
type Route struct {
	Method string
	Path   string
}

// Server is the agent's HTTP API.
type Server struct {
	collectors  []prometheus.Collector
	rt          runtime.Runtime
	runtimeName string
	hub         *events.Hub
	token       string
	metricsTok  string
	version     string
	commit      string
	agentID     string
	log         *slog.Logger
	ping        time.Duration
	pongWait    time.Duration
	stopTimeout time.Duration
	gpus        GPUInventory
	usage       UsageMeter
	mockFaults  MockFaultInjector
	host        HostReporter
	limits      connLimits
	drain       Drainer
	pulls       *PullTimer
	network     NetworkChecker
	volumes     VolumeStore
	ready       *readiness
	metrics     *metrics
	echo        *echo.Echo
	// authFailures limits each client's failed authentications.
	authFailures *authLimiter
	// openStreams counts the open /ws streams, for the metrics.
	openStreams atomic.Int64

	// streamsCtx is cancelled by Shutdown; every WebSocket loop watches it
	// because http.Server.Shutdown does not track hijacked connections.
	streamsCtx  context.Context
	stopStreams context.CancelFunc
	streams     sync.WaitGroup
	mu          sync.Mutex
	closing     bool // guarded by mu; no stream is added once set
}

// New checks opts and builds the API's routes.
func New(opts Options) (*Server, error) {
	if opts.Runtime == nil {
		return nil, errors.New("server: Options.Runtime is required")
	}
	if opts.Hub == nil {
		return nil, errors.New("server: Options.Hub is required")
	}
	if opts.Token == "" {
		return nil, errors.New("server: Options.Token is required")
	}
	if opts.MetricsToken != "" && opts.MetricsToken == opts.Token {
		return nil, errors.New("server: Options.MetricsToken must differ from Options.Token")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.RuntimeName == "" {
		opts.RuntimeName = "containerd"
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = DefaultPingInterval
	}
	if opts.PongWait < opts.PingInterval {
		opts.PongWait = 2 * opts.PingInterval
	}
	if opts.DefaultStopTimeout <= 0 {
		opts.DefaultStopTimeout = DefaultStopTimeout
	}
	if opts.ReadHeaderTimeout <= 0 {
		opts.ReadHeaderTimeout = defaultReadHeaderTimeout
	}
	if opts.BodyTimeout <= 0 {
		opts.BodyTimeout = defaultBodyTimeout
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = defaultIdleTimeout
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = defaultMaxConnections
	}
	s := &Server{
		rt:          opts.Runtime,
		runtimeName: opts.RuntimeName,
		hub:         opts.Hub,
		token:       opts.Token,
		metricsTok:  opts.MetricsToken,
		version:     opts.Version,
		commit:      opts.Commit,
		agentID:     opts.AgentID,
		log:         opts.Logger,
		ping:        opts.PingInterval,
		pongWait:    opts.PongWait,
		stopTimeout: opts.DefaultStopTimeout,
		gpus:        opts.GPUs,
		usage:       opts.Usage,
		mockFaults:  opts.MockFaults,
		host:        opts.Host,
		limits: connLimits{readHeader: opts.ReadHeaderTimeout, body: opts.BodyTimeout,
			idle: opts.IdleTimeout, maxConns: opts.MaxConnections},
		drain:        opts.Drain,
		pulls:        opts.Pulls,
		collectors:   opts.Collectors,
		network:      opts.Network,
		volumes:      opts.Volumes,
		ready:        &readiness{now: time.Now},
		authFailures: newAuthLimiter(),
	}
	s.streamsCtx, s.stopStreams = context.WithCancel(context.Background())
	s.metrics = newMetrics(s)
	s.countExits()

	e := echo.NewWithConfig(echo.Config{
		Logger:           opts.Logger,
		HTTPErrorHandler: s.handleError,
		// Overwriting a route silently would hide a mistake; the default
		// router allows it.
		Router: echo.NewRouter(echo.RouterConfig{}),
	})
	// Use middleware runs after routing, for unknown routes too, so that
	// authenticate can tell the health checks apart by their route rather
	// than by a raw path.
	e.Use(s.logRequests, s.recoverPanics, s.authenticate)

	e.GET(healthPath, s.healthz)
	e.GET(readinessPath, s.readyz)
	e.GET("/openapi.json", s.openAPI)
	e.GET("/asyncapi.yaml", s.asyncAPI)
	e.POST("/start_instance", s.startInstance)
	e.POST("/terminate_instance", s.terminateInstance)
	e.GET("/instances", s.listInstances)
	e.GET("/instances/:id", s.getInstance)
	e.GET("/instances/:id/logs", s.instanceLogs)
	e.GET("/ws", s.streamEvents)
	e.GET("/gpus", s.listGPUs)
	e.GET("/host", s.hostReport)
	e.GET(metricsPath, s.serveMetrics)
	e.GET("/debug/pprof/:profile", s.serveProfile)
	e.POST("/drain", s.drainHost)
	e.POST("/undrain", s.undrainHost)
	e.GET("/images", s.listImages)
	e.POST("/images/pull", s.pullImage)
	e.DELETE("/images", s.removeImage)
	e.POST("/volumes", s.createVolume)
	e.GET("/volumes", s.listVolumes)
	e.DELETE("/volumes/:name", s.deleteVolume)
	e.POST("/mock/gpus/:index/faults", s.injectMockFault)
	s.echo = e
	return s, nil
}

// Handler returns the API as an http.Handler.
func (s *Server) Handler() http.Handler { return s.echo }

// Routes lists the registered routes, sorted by path and method, for the test
// that keeps the OpenAPI document honest.
func (s *Server) Routes() []Route {
	var out []Route
	for _, r := range s.echo.Router().Routes() {
		out = append(out, Route{Method: r.Method, Path: r.Path})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Method < out[j].Method
	})
	return out
}

// Shutdown closes every WebSocket stream with a going-away close frame and
// waits, until ctx is done, for their goroutines to end. New streams opened
// afterwards are closed at once. It does not touch plain HTTP requests:
// http.Server.Shutdown handles those.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeStreams()
	done := make(chan struct{})
	go func() {
		s.streams.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Serve serves the API on ln until ctx is cancelled, then shuts down
// gracefully: it stops accepting, lets requests in flight finish and closes
// WebSocket streams, for at most 10 seconds. Containers are left running.
// At most MaxConnections connections are served at once, and a request's
// headers and body must arrive within ReadHeaderTimeout and BodyTimeout.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ln = netutil.LimitListener(ln, s.limits.maxConns)
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.limits.readHeader,
		// Headers and body together. Once the body is read to its end
		// the server lifts the deadline, so a handler running longer (a
		// start that pulls) keeps its context; a hijacked WebSocket sets
		// its own deadlines at once.
		ReadTimeout: s.limits.readHeader + s.limits.body,
		IdleTimeout: s.limits.idle,
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	// Hijacked WebSocket connections are invisible to srv.Shutdown; this
	// hook closes them when it starts.
	srv.RegisterOnShutdown(s.closeStreams)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		s.closeStreams()
		return err
	case <-ctx.Done():
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), defaultShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	if err != nil {
		// Requests still running past the deadline are cut off.
		_ = srv.Close()
	}
	if serr := s.Shutdown(shutdownCtx); err == nil {
		err = serr
	}
	<-served // http.ErrServerClosed
	return err
}
