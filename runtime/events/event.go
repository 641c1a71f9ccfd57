// Package events carries the agent's live events (instance state changes, pull
// progress, GPU health) from their sources to GET /ws subscribers. Sources
// depend only on the Publisher interface; the Hub keeps a bounded ring buffer
// so that a client can resume from a sequence number. PullTimer, a Publisher
// between the back end and the Hub, times image pulls from those events.
// Every layer above runtime/hostport may import it; it imports none of them.
package events

import (
	"time"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// Event types. Instance events carry the instance's status in Status as well,
// so that a client may filter on either.
const (
	TypeInstancePulling      = "instance.pulling"
	TypeInstancePullProgress = "instance.pull_progress"
	TypeInstanceCreating     = "instance.creating"
	TypeInstanceRunning      = "instance.running"
	TypeInstanceExited       = "instance.exited"
	TypeInstanceTerminating  = "instance.terminating"
	TypeInstanceTerminated   = "instance.terminated"
	TypeInstanceFailed       = "instance.failed"
	// TypeRuntimeDisconnected and TypeRuntimeConnected report the agent's
	// connection to the container runtime; a lost connection is not an exit.
	TypeRuntimeDisconnected = "runtime.disconnected"
	TypeRuntimeConnected    = "runtime.connected"
	// TypeEventsLost is sent to a resuming client whose ?since= lies beyond
	// what the buffer still holds.
	TypeEventsLost = "events.lost"
	// TypeGPUHealth reports a GPU taken out of service (Status "unhealthy",
	// GPU its UUID); InstanceID is set when an instance holds that GPU.
	TypeGPUHealth = "gpu.health"
	// TypeInstanceGPUFault tells the instance holding a GPU that it
	// reported an Xid or an ECC error: Fault says which, what it means and
	// whether the GPU was taken out of service. Status is empty: the
	// instance itself may run on.
	TypeInstanceGPUFault = "instance.gpu_fault"
	// TypeInstanceOrphan reports an instance present on this host that the
	// central server does not expect; TypeInstanceMissing one the server
	// expects that is not here. Each is published once when the discrepancy
	// appears (server/reporter's reconciliation), not on every heartbeat.
	// Neither is acted upon by the agent on its own.
	TypeInstanceOrphan  = "instance.orphan"
	TypeInstanceMissing = "instance.missing"
	// TypeImagePulling, TypeImagePulled and TypeImageFailed follow a
	// pre-pull (POST /images/pull) of Image: pulling first (again with
	// Progress while bytes arrive), then pulled (Digest, SizeBytes,
	// Seconds) or failed (Error, Code). Status is the pull's: "pulling",
	// "pulled" or "failed".
	TypeImagePulling = "image.pulling"
	TypeImagePulled  = "image.pulled"
	TypeImageFailed  = "image.failed"
)

// Event is one thing that happened. Seq and Time are set by the Hub.
type Event struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Type       string    `json:"type"`
	InstanceID string    `json:"instance_id,omitempty"`
	Status     string    `json:"status,omitempty"`
	ExitCode   *int      `json:"exit_code,omitempty"`
	// OOMKilled is set on an exit caused by the instance's memory limit.
	OOMKilled bool `json:"oom_killed,omitempty"`
	// Reason says why an instance.exited instance stopped, when the agent
	// knows: "disk_limit" (stopped by the agent at its disk limit) or
	// "oom" (with OOMKilled).
	Reason   string        `json:"reason,omitempty"`
	Step     string        `json:"step,omitempty"`
	Error    string        `json:"error,omitempty"`
	Message  string        `json:"message,omitempty"`
	Progress *PullProgress `json:"progress,omitempty"`
	// GPU is the UUID of the GPU a gpu.health event is about.
	GPU string `json:"gpu,omitempty"`
	// Ports are an instance.running instance's published ports.
	Ports []hostport.Mapping `json:"ports,omitempty"`
	// Fault is an instance.gpu_fault event's fault.
	Fault *GPUFault `json:"fault,omitempty"`
	// Image is the reference an image.* event is about.
	Image string `json:"image,omitempty"`
	// Digest and SizeBytes describe an image.pulled event's image, Seconds
	// how long its pull took.
	Digest    string  `json:"digest,omitempty"`
	SizeBytes int64   `json:"size_bytes,omitempty"`
	Seconds   float64 `json:"seconds,omitempty"`
	// Code says why an image.failed pull failed, as a start's error code
	// does: not_found, unauthorized, disk_full, stalled.
	Code string `json:"code,omitempty"`
	// Usage is what an instance.exited instance used (runtime/usage).
	Usage *Usage `json:"usage,omitempty"`
}

// Usage is what a rental has used since its start, as reported to the
// platform. Each figure only grows while the rental exists.
type Usage struct {
	// CPUSeconds is the CPU time its processes used (the cgroup's
	// usage_usec, cpuacct.usage on cgroup v1).
	CPUSeconds float64 `json:"cpu_seconds"`
	// MemoryMaxBytes is the most memory it held at once (memory.peak,
	// memory.max_usage_in_bytes on v1, else the most sampled).
	MemoryMaxBytes uint64 `json:"memory_max_bytes"`
	// NetRxBytes and NetTxBytes are what its network interface received
	// and sent.
	NetRxBytes uint64 `json:"net_rx_bytes"`
	NetTxBytes uint64 `json:"net_tx_bytes"`
	// DiskUsedBytes is the most its writable layer held, where the back
	// end can measure it; 0 where it cannot.
	DiskUsedBytes uint64 `json:"disk_used_bytes"`
	// GPUSeconds is the GPUs it holds times the seconds it has run.
	GPUSeconds float64 `json:"gpu_seconds"`
}

// GPU fault kinds, as in GPUFault.Kind.
const (
	FaultXid = "xid"
	FaultECC = "ecc"
)

// GPUFault is an error a GPU reported while an instance held it.
type GPUFault struct {
	// GPU is the GPU's UUID, Index its NVML index.
	GPU   string `json:"gpu"`
	Index int    `json:"index"`
	// Kind is FaultXid or FaultECC (a double-bit ECC error).
	Kind string `json:"kind"`
	// Xid is the Xid's number; 0 for an ECC error.
	Xid uint64 `json:"xid"`
	// Meaning says what the fault means, e.g. "GPU has fallen off the bus".
	Meaning string `json:"meaning"`
	// Benched says whether the GPU is out of service: it is not handed to
	// a new rental until it has been reset or serviced.
	Benched bool      `json:"benched"`
	Time    time.Time `json:"time"`
}

// PullProgress is how far an image pull has come, in bytes.
type PullProgress struct {
	DoneBytes  int64 `json:"done_bytes"`
	TotalBytes int64 `json:"total_bytes"`
}

// Publisher accepts events. Publish never blocks on a slow consumer.
type Publisher interface {
	Publish(Event)
}
