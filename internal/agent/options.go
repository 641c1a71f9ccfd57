package agent

import (
	"context"
	"log/slog"
	"time"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/usage"
	"github.com/host-agent/host-agent/runtime/volume"
	"github.com/host-agent/host-agent/server"
	"github.com/host-agent/host-agent/server/reporter"
)

// DefaultEventBuffer is how many events a resuming /ws client can catch
// up on.
const DefaultEventBuffer = 4096

// Backend is a runtime back end as the agent uses it: runtime/containerd
// and runtime/docker are. Where it also keeps the drained state
// (server.Drainer) or has metrics (Collector() prometheus.Collector), the
// agent uses them.
type Backend = runtime.Runtime

// Options are what New assembles the agent from. Fields left zero get the
// daemon's defaults; a part left nil is not built.
type Options struct {
	Logger *slog.Logger
	// EventBuffer is the hub's ring buffer (default DefaultEventBuffer).
	EventBuffer int
	// Inventory is the GPU inventory, opened by the caller (NVML or a
	// mock; gpu.Open(nil) on a host without GPUs). Required. The caller
	// closes it after Close.
	Inventory *gpu.Inventory
	// Injector injects GPUs through CDI; nil: no GPU is injected (a host
	// without GPUs). Its driver watch runs while the agent runs.
	Injector *cdi.Injector
	// Events is the agent's event stream (default NewEvents(EventBuffer)).
	// Build the back end on Events.Pulls, so that pulls are timed.
	Events Events
	// Backend is the runtime back end, built by the caller on
	// Events.Pulls. Required. The agent closes it (through the lifecycle).
	Backend Backend
	// HeldBecause, when set, says why the agent stays on this back end
	// rather than switch runtimes: /readyz says it while the back end
	// does not answer.
	HeldBecause string
	// Reservations are what every start reserves besides its GPUs.
	Reservations Reservations
	// RestoreTimeout bounds the restore of the reservations from the
	// runtime's containers in New (zero: no restore in New; the lifecycle
	// refuses starts until one succeeds). A failed restore is logged and
	// retried before the first GPU rental.
	RestoreTimeout time.Duration
	// Reporter, when set, is the reporter's configuration (ServerURL,
	// AgentID, Token, Interval...); New sets what it wires itself
	// (Runtime, GPUs, Events, Sharing) and fills in Logger, CDI, Drain and
	// ObserveHeartbeat where they are unset.
	Reporter *reporter.Options
	// Server, when set, is the API server's configuration (Token, AgentID,
	// RuntimeName...); New sets Runtime, Hub, Pulls and GPUs, fills in
	// Logger, Host (the reporter) and Drain where they are unset, and puts
	// the back end's, the heartbeats' and the disk's metrics before
	// Collectors.
	Server *server.Options
	// Usage, when set, meters the rentals (NewMeter): their instance.exited
	// events carry their usage, it is read every UsageInterval, and the
	// API, the reporter and GET /metrics report it.
	Usage *usage.Meter
	// Loops are more background loops, run by Run until its context is
	// done and stopped before the lifecycle closes (the network rules'
	// recheck, the start-up self-test...).
	Loops []func(ctx context.Context)
}

// Reservations say what a start reserves besides GPUs, in the order the
// lifecycle takes them: GPUs, the share of the host, host ports, the disk
// limits (or the plain reserve), volumes, NUMA alignment, the default
// bandwidth.
type Reservations struct {
	// GPUs allocates the inventory's GPUs; nil: a new allocator of
	// Options.Inventory (an inventory has one).
	GPUs *gpu.Allocator
	// Shares divides the host's memory and CPUs among rentals.
	Shares ShareOptions
	// Ports are the host ports published rentals get; PublishPorts says
	// whether rentals have a network to publish them on.
	Ports        *hostport.Allocator
	PublishPorts bool
	// DiskPath is where the runtime keeps images and writable layers;
	// starts are refused while it has less than DiskReserveBytes free
	// (zero: never). Where DiskLimits is set, its Path and ReserveBytes
	// are used instead.
	DiskPath         string
	DiskReserveBytes uint64
	// DiskLimits, when set, gives every rental a limit on its writable
	// layer (runtime/disk's Limits) in place of the plain disk reserve.
	// DiskWatchInterval, when set, is how often the agent measures the
	// writable layers and stops a rental past its limit (where the back
	// end can measure and stop rentals).
	DiskLimits        *disk.Limits
	DiskWatchInterval time.Duration
	// Volumes, when set, is the host's volume store: a start's volumes are
	// attached from it (lifecycle.VolumeReservations), and the API and the
	// reporter list them.
	Volumes *volume.Store
	// NUMAAlign pins GPU rentals to their GPUs' NUMA node, read from
	// SysRoot (default /sys).
	NUMAAlign bool
	SysRoot   string
	// Meminfo is where the host's memory is read (default /proc/meminfo).
	Meminfo string
	// Bandwidth is the traffic limit of a rental naming none
	// (RENTAL_EGRESS_MBPS, RENTAL_INGRESS_MBPS; zero: unlimited), taken
	// last, after the kinds that fill in the other limits.
	Bandwidth runtime.Bandwidth
}

// ShareOptions are how the host's memory and CPUs are divided among
// rentals (runtime/share).
type ShareOptions struct {
	// ReservedMemoryMB and ReservedCPUs are kept for the system, the agent
	// and containerd (HOST_RESERVED_MEMORY_MB, HOST_RESERVED_CPUS).
	ReservedMemoryMB int64
	ReservedCPUs     float64
	// CPURentalMemoryMB and CPURentalCPUs size a rental without GPUs that
	// names no limits (CPU_RENTAL_MEMORY_MB, CPU_RENTAL_CPUS; zero: one
	// GPU's share, or an eighth of the host without GPUs).
	CPURentalMemoryMB int64
	CPURentalCPUs     float64
	// Pids is the pids limit of a rental that names none (RENTAL_PIDS_LIMIT).
	Pids int64
	// ShmFraction sizes a GPU rental's /dev/shm as a fraction of its memory
	// limit (SHM_MEMORY_FRACTION; 0 leaves the runtime's 64 MiB).
	ShmFraction float64
}
