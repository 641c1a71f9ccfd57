package gpu

import "time"

// Event types, named as the agent's event stream names them: the wiring
// passes them on unchanged.
const (
	// EventHealth reports a GPU taken out of service (Status
	// StatusUnhealthy, GPU its UUID); InstanceID is set when an instance
	// holds that GPU.
	EventHealth = "gpu.health"
	// EventFault tells the instance holding a GPU that it reported an Xid
	// or an ECC error: Fault says which, what it means and whether the GPU
	// was taken out of service.
	EventFault = "instance.gpu_fault"
)

// Event is what the health watch reports. The inventory knows nothing of
// where it goes: the agent's wiring turns it into its own event.
type Event struct {
	// Type is EventHealth or EventFault.
	Type       string
	InstanceID string
	// Status is StatusUnhealthy on an EventHealth; empty on an EventFault
	// (the instance itself may run on).
	Status string
	// GPU is the GPU's UUID.
	GPU     string
	Message string
	// Fault is an EventFault's fault.
	Fault *Fault
}

// Publisher accepts the health watch's events. Publish must not block on
// a slow consumer.
type Publisher interface {
	Publish(Event)
}

// GPU fault kinds, as in Fault.Kind.
const (
	FaultXid = "xid"
	FaultECC = "ecc"
)

// Fault is an error a GPU reported while an instance held it.
type Fault struct {
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
