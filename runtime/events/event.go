// Package events carries the agent's live events (instance state changes, pull
// progress, GPU health) from their sources to GET /ws subscribers. Sources
// depend only on the Publisher interface; the Hub keeps a bounded ring buffer
// so that a client can resume from a sequence number.
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
	// TypeInstanceOrphan reports an instance present on this host that the
	// central server does not expect; TypeInstanceMissing one the server
	// expects that is not here. Each is published once when the discrepancy
	// appears (server/reporter's reconciliation), not on every heartbeat.
	// Neither is acted upon by the agent on its own.
	TypeInstanceOrphan  = "instance.orphan"
	TypeInstanceMissing = "instance.missing"
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
	OOMKilled bool          `json:"oom_killed,omitempty"`
	Step      string        `json:"step,omitempty"`
	Error     string        `json:"error,omitempty"`
	Message   string        `json:"message,omitempty"`
	Progress  *PullProgress `json:"progress,omitempty"`
	// GPU is the UUID of the GPU a gpu.health event is about.
	GPU string `json:"gpu,omitempty"`
	// Ports are an instance.running instance's published ports.
	Ports []hostport.Mapping `json:"ports,omitempty"`
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
