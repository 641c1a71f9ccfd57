package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/events/gpuevents"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	"github.com/host-agent/host-agent/runtime/share"
	"github.com/host-agent/host-agent/runtime/usage"
	"github.com/host-agent/host-agent/server"
	"github.com/host-agent/host-agent/server/reporter"
)

// Events are the agent's event stream: the hub /ws follows, and in front
// of it the pull timer, through which the back end publishes. Between the
// two, exits get the rental's usage once the agent has a meter
// (Options.Usage); the lifecycle publishes there too.
type Events struct {
	Hub   *events.Hub
	Pulls *events.PullTimer

	usage *usageEvents
}

// publisher is where the lifecycle publishes: where the back end does,
// through the pull timer (a start's instance.failed ends its pull's
// timing) and the usage of exits, when the events have them.
func (e Events) publisher() events.Publisher {
	switch {
	case e.Pulls != nil:
		return e.Pulls
	case e.usage != nil:
		return e.usage
	}
	return e.Hub
}

// NewEvents makes the hub, keeping buffer events (default
// DefaultEventBuffer), and its pull timer.
func NewEvents(buffer int) Events {
	if buffer <= 0 {
		buffer = DefaultEventBuffer
	}
	hub := events.NewHub(buffer, time.Now)
	u := &usageEvents{next: hub}
	return Events{Hub: hub, Pulls: events.NewPullTimer(u), usage: u}
}

// Agent is the assembled agent.
type Agent struct {
	Events    Events
	Inventory *gpu.Inventory
	Injector  *cdi.Injector
	// Backend is the runtime back end itself; Lifecycle the one owner of
	// every rental above it, which the API and the reporter use.
	Backend   Backend
	Lifecycle *lifecycle.Lifecycle
	Shares    *share.Reservations
	// Usage is the rentals' meter; nil where Options had none.
	Usage *usage.Meter
	// Reporter and Server are nil where Options did not ask for them.
	Reporter   *reporter.Reporter
	Server     *server.Server
	Heartbeats *server.HeartbeatMetrics

	logger *slog.Logger
	loops  []func(context.Context)
}

// New assembles the agent over the back end o.Backend, built by the
// caller on o.Events.Pulls. On error nothing New built is left open; the
// back end is closed.
func New(ctx context.Context, o Options) (a *Agent, err error) {
	if o.Inventory == nil || o.Backend == nil {
		return nil, errors.New("agent: Options.Inventory and Options.Backend are required")
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.Default()
	}
	ev := o.Events
	if ev.Hub == nil {
		ev = NewEvents(o.EventBuffer)
	}
	if o.Usage != nil {
		if ev.usage == nil {
			_ = o.Backend.Close()
			return nil, errors.New("agent: Options.Usage needs Options.Events from NewEvents")
		}
		ev.usage.meter.Store(o.Usage)
	}
	a = &Agent{Events: ev, Inventory: o.Inventory, Injector: o.Injector, Backend: o.Backend, Usage: o.Usage, logger: logger}
	drain, _ := o.Backend.(server.Drainer)
	lc, shares, err := NewLifecycle(holdRuntime(o.Backend, o.HeldBecause), LifecycleOptions{
		Inventory: o.Inventory, Reservations: o.Reservations, Events: ev.publisher(), Logger: logger, Drain: drain,
	})
	if err != nil {
		_ = o.Backend.Close()
		return nil, err
	}
	a.Lifecycle, a.Shares = lc, shares
	defer func() {
		if err != nil {
			_ = lc.Close()
		}
	}()
	if o.RestoreTimeout > 0 {
		// Bounded: with the runtime down, serving (and answering
		// readyz) comes first; the restore is retried before the first
		// GPU rental, and CPU rentals go ahead.
		restoreCtx, cancel := context.WithTimeout(ctx, o.RestoreTimeout)
		err := lc.Restore(restoreCtx)
		cancel()
		if err != nil {
			logger.Warn("GPU holders not read back yet", "error", err)
		}
	}

	// The loops stop, in Run, before the lifecycle and the inventory close.
	if o.Injector != nil {
		inj := o.Injector
		a.loops = append(a.loops, func(ctx context.Context) { inj.WatchDriver(ctx, cdi.DefaultDriverCheckInterval) })
	}
	a.loops = append(a.loops, func(ctx context.Context) {
		if err := o.Inventory.WatchHealth(ctx, gpuevents.To(ev.Hub)); err != nil {
			logger.Error("GPU health watch stopped", "error", err)
		}
	})
	if r := o.Reservations; r.DiskLimits != nil && r.DiskWatchInterval > 0 {
		a.loops = append(a.loops, func(ctx context.Context) {
			watchDisk(ctx, r.DiskLimits, r.DiskWatchInterval, lc, o.Backend, logger)
		})
	}
	if o.Usage != nil {
		a.loops = append(a.loops, func(ctx context.Context) { meterRentals(ctx, lc, o.Usage) })
	}
	a.loops = append(a.loops, o.Loops...)

	if o.Reporter != nil {
		a.Heartbeats = server.NewHeartbeatMetrics()
		ro := *o.Reporter
		ro.Runtime = lc
		ro.GPUs = o.Inventory
		ro.Events = ev.Hub
		ro.Sharing = shares
		if ro.Logger == nil {
			ro.Logger = logger
		}
		if ro.CDI == nil && o.Injector != nil {
			ro.CDI = o.Injector.Available
		}
		if ro.Drain == nil && drain != nil {
			ro.Drain = drain
		}
		if ro.Volumes == nil && o.Reservations.Volumes != nil {
			ro.Volumes = o.Reservations.Volumes
		}
		if ro.Usage == nil && o.Usage != nil {
			ro.Usage = o.Usage
		}
		if ro.ObserveHeartbeat == nil {
			ro.ObserveHeartbeat = a.Heartbeats.Observe
		}
		if a.Reporter, err = reporter.New(ro); err != nil {
			return nil, fmt.Errorf("reporter: %w", err)
		}
		rep := a.Reporter
		a.loops = append(a.loops, func(ctx context.Context) { _ = rep.Run(ctx) })
	}

	if o.Server != nil {
		so := *o.Server
		so.Runtime = lc
		so.Hub = ev.Hub
		so.Pulls = ev.Pulls
		so.GPUs = o.Inventory
		if so.Logger == nil {
			so.Logger = logger
		}
		if so.Host == nil && a.Reporter != nil {
			so.Host = a.Reporter
		}
		if so.Drain == nil && drain != nil {
			so.Drain = drain
		}
		if so.Volumes == nil && o.Reservations.Volumes != nil {
			so.Volumes = o.Reservations.Volumes
		}
		if so.Usage == nil && o.Usage != nil {
			so.Usage = o.Usage
		}
		so.Collectors = append(a.collectors(o.Reservations), so.Collectors...)
		if a.Server, err = server.New(so); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// collectors are the metrics of GET /metrics that the server does not keep
// itself: the back end's (containerd's call durations), the heartbeats'
// the runtime's disk and the rentals' usage.
func (a *Agent) collectors(r Reservations) []prometheus.Collector {
	var out []prometheus.Collector
	if c, ok := a.Backend.(interface{ Collector() prometheus.Collector }); ok {
		out = append(out, c.Collector())
	}
	if a.Heartbeats != nil {
		out = append(out, a.Heartbeats)
	}
	path, reserve := r.DiskPath, r.DiskReserveBytes
	if r.DiskLimits != nil {
		path, reserve = r.DiskLimits.Path, r.DiskLimits.ReserveBytes
	}
	if path != "" {
		out = append(out, server.DiskCollector(path, reserve, disk.Free))
	}
	if a.Usage != nil {
		out = append(out, a.Usage.Collector())
	}
	return out
}

// Run runs the background loops and serves the API on ln (when the agent
// has a server; ln may be nil otherwise) until ctx is done. The loops
// have stopped when it returns.
func (a *Agent) Run(ctx context.Context, ln net.Listener) error {
	loopCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	for _, loop := range a.loops {
		wg.Go(func() { loop(loopCtx) })
	}
	if a.Server == nil {
		<-ctx.Done()
		return nil
	}
	if err := a.Server.Serve(ctx, ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close closes the lifecycle and, with it, the back end. Rentals keep
// running. The inventory is the caller's to close.
func (a *Agent) Close() error { return a.Lifecycle.Close() }

// LifecycleOptions are what NewLifecycle builds the lifecycle with.
type LifecycleOptions struct {
	Inventory    *gpu.Inventory
	Reservations Reservations
	// Events receives the lifecycle's events; nil: none.
	Events events.Publisher
	Logger *slog.Logger
	// Drain keeps the host's drained state; nil: never drained.
	Drain runtime.DrainState
}

// NewLifecycle is the agent's lifecycle over be, with every reservation
// kind the agent takes (Kinds). The self-test and gpu-check, which need no
// API, use it directly; New uses it for the daemon and the benchmark.
func NewLifecycle(be runtime.Runtime, o LifecycleOptions) (*lifecycle.Lifecycle, *share.Reservations, error) {
	kinds, shares, err := Kinds(o.Inventory, o.Reservations, o.Logger)
	if err != nil {
		return nil, nil, err
	}
	return lifecycle.New(be, lifecycle.Options{Kinds: kinds, Events: o.Events, Logger: o.Logger, Drain: o.Drain}), shares, nil
}
