// Package runtime is the contract between the agent and a container
// runtime: what a rental is (InstanceSpec, Instance, labels), what a back
// end does (Runtime: start, terminate, read back), and the errors they
// answer with. It holds types and the pure functions over them; the one
// owner of a rental's lifecycle is runtime/lifecycle, the back ends are
// runtime/containerd and runtime/docker, and what the back ends share is
// in runtime/backend. This package stays free of any back end's imports
// so that callers compile without them.
package runtime

import (
	"context"
	"strconv"
	"time"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// Runtime runs rentals as containers. Every method takes the caller's context;
// errors carry github.com/containerd/errdefs kinds (NotFound, Conflict,
// InvalidArgument, Unavailable) so that callers can classify them without
// knowing the back end.
//
// runtime/lifecycle implements it for the agent's callers, over a back end
// that implements it too and is called for one instance at a time. Below
// the lifecycle a back end's Start of an existing instance answers it as it
// is (the lifecycle has compared the spec hash, and refuses a different
// request), and a back end publishes only the events only it sees
// (instance.pulling, instance.creating, instance.exited, the image
// events); the lifecycle publishes the others.
type Runtime interface {
	// Start pulls the image if needed, creates the container and starts its
	// task. It is idempotent: a spec equal to the running one answers the
	// existing instance; a different spec under the same ID is a Conflict.
	// On failure nothing of the instance is left behind, and the error is a
	// *StepError naming the step that failed.
	Start(ctx context.Context, spec InstanceSpec) (Instance, error)
	// Terminate stops the instance (SIGTERM, then SIGKILL after timeout) and
	// deletes its task, container and snapshot. Concurrent calls for one
	// instance share one termination.
	Terminate(ctx context.Context, id string, timeout time.Duration) error
	// Get reads one instance back from the runtime.
	Get(ctx context.Context, id string) (Instance, error)
	// List reads every instance of the agent's namespace.
	List(ctx context.Context) ([]Instance, error)
	// Logs returns at most the last tail lines of the instance's output,
	// and at most MaxLogBytes of them: truncated reports that the lines
	// asked for were cut to that (from the front, at a line boundary when
	// there is one).
	Logs(ctx context.Context, id string, tail int) (data []byte, truncated bool, err error)
	// Ping reports whether the runtime's daemon answers.
	Ping(ctx context.Context) error
	// Info names the runtime and its version, for reports.
	Info(ctx context.Context) (Info, error)
	// Close releases the agent's connections. Containers keep running.
	Close() error
}

// LeftoverSweeper is a back end that holds resources outside its
// containers (a rental's network). The Lifecycle's Restore calls it with
// the instances that exist, before any start, so that what a crash left
// behind is removed while nothing can be in flight.
type LeftoverSweeper interface {
	SweepLeftovers(ctx context.Context, live []Instance) error
}

// Exit reasons (Instance.ExitReason, the instance.exited event's reason).
const (
	// ExitReasonDiskLimit: the agent stopped the instance because its
	// writable layer outgrew its disk limit, or because the host's disk
	// fell to its reserve.
	ExitReasonDiskLimit = "disk_limit"
	// ExitReasonOOM: the kernel killed a process of the instance at its
	// memory limit (OOMKilled).
	ExitReasonOOM = "oom"
)

// ExitReason is the reason an exit reports: the one the agent recorded
// when it stopped the instance, else ExitReasonOOM for an OOM kill.
func ExitReason(recorded string, oomKilled bool) string {
	if recorded == "" && oomKilled {
		return ExitReasonOOM
	}
	return recorded
}

// ReasonStopper is a back end that stops a running instance on the
// agent's own account: it records reason (LabelExitReason, or what the
// back end keeps instead) before it kills the task, so that the exit
// carries the reason even if the agent restarts in between. The container
// stays, with what it holds, until the instance is terminated.
type ReasonStopper interface {
	StopWithReason(ctx context.Context, id, reason string) error
}

// DiskMeter measures the bytes a rental's writable layer uses; id is the
// instance ID.
type DiskMeter interface {
	DiskUsed(ctx context.Context, id string) (uint64, error)
}

// DiskLimit returns the limit of the instance's writable layer in bytes,
// as its labels record it; 0: none.
func (i Instance) DiskLimit() uint64 { return DiskLimitOf(i.AgentLabels) }

// DiskLimitOf reads LabelDiskLimitBytes from a container's labels; 0: none.
func DiskLimitOf(labels map[string]string) uint64 {
	n, err := strconv.ParseUint(labels[LabelDiskLimitBytes], 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// MaxLogBytes caps the bytes one Logs call returns.
const MaxLogBytes = 1 << 20

// Info describes the container runtime in use.
type Info struct {
	Name      string
	Version   string
	Namespace string
}

// Status is the state of an instance as read back from the runtime.
type Status string

// Instance statuses.
const (
	StatusCreated Status = "created"
	StatusRunning Status = "running"
	StatusPaused  Status = "paused"
	StatusExited  Status = "exited"
	StatusUnknown Status = "unknown"
)

// Instance is a rental as the runtime reports it.
type Instance struct {
	ID          string
	ContainerID string
	Image       string
	Status      Status
	// ExitCode is set once the instance's main process has exited.
	ExitCode *int
	// OOMKilled says that the kernel killed a process of the instance for
	// exceeding its memory limit (its exit code is then normally 137).
	OOMKilled bool
	// ExitReason says why an exited instance stopped when the agent knows
	// (ExitReasonDiskLimit, ExitReasonOOM); empty otherwise.
	ExitReason string
	Pid        uint32
	CreatedAt  time.Time
	StartedAt  time.Time
	FinishedAt time.Time
	// SpecHash identifies the request that created the instance.
	SpecHash string
	// Labels are the caller's labels, without the agent's prefix.
	Labels map[string]string
	// GPUs are the GPUs the instance holds, from its labels.
	GPUs []GPU
	// Ports are the instance's published ports, from its labels.
	Ports []hostport.Mapping
	// AgentLabels are all of the container's labels, the agent's own
	// included: reservations are restored from them.
	AgentLabels map[string]string `json:"-"`
}
