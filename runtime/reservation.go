package runtime

import (
	"strconv"
	"strings"
)

// Admission is one step of a start's admission, which the Lifecycle runs
// in order, for one instance at a time, under its lock, when no container
// of the instance exists: it checks spec, may fill in what the back end
// needs (a default), and may reserve, returning the labels that record the
// reservation (nil when it holds nothing). On error nothing is held. A
// step that holds something is a ReservationKind.
type Admission interface {
	// Name names the step in logs and errors ("gpus", "ports", "disk").
	Name() string
	// Reserve admits spec, or refuses it.
	Reserve(spec *InstanceSpec) (labels map[string]string, err error)
}

// ReservationKind is one kind of resource a rental holds exclusively: GPUs
// today, host ports and network addresses next. The Lifecycle is the only
// caller of its methods and calls them for one instance at a time, under
// that instance's lock:
//
//   - Reserve, when no container of the instance exists, before the back
//     end creates it: it reserves what the spec asks for, fills what the back
//     end needs into the spec, and returns labels recording the reservation,
//     which the back end writes on the container.
//   - Release, once no container of the instance exists any more.
//   - Restore, at the agent's start, from an existing container's labels.
//
// Holdings is what the kind holds, per instance, as the labels Reserve
// returned for it: the Lifecycle reconciles it against the containers'
// labels, and tests assert the two are equal.
type ReservationKind interface {
	// Reserve (Admission) reserves for spec; it returns nil labels when
	// spec asks for nothing of this kind. On error nothing is held.
	Admission
	// Release frees whatever id holds; releasing nothing does nothing.
	Release(id string)
	// Restore records what a container already holds, from its labels.
	Restore(id string, labels map[string]string) error
	// Holdings maps each holding instance to the labels recording what it
	// holds.
	Holdings() map[string]map[string]string
	// Records reports whether a label key is one this kind writes.
	Records(key string) bool
}

// GPUAllocator hands GPUs to instances exclusively. gpu.Allocator provides
// one, through runtime/gpualloc; it is declared here, where it is used.
type GPUAllocator interface {
	// Reserve is idempotent for an instance asking again for the same GPUs.
	Reserve(instanceID string, req GPURequest) ([]GPU, error)
	Release(instanceID string)
	// Restore records GPUs an instance already holds (from its labels).
	Restore(instanceID string, uuids []string) error
	// Holders lists every instance holding GPUs, with its GPUs by index.
	Holders() map[string][]GPU
}

// VolumeAttacher attaches volumes to rentals exclusively; runtime/volume's
// Store is one. It is declared here, where it is used.
type VolumeAttacher interface {
	// Attach attaches every volume of reqs to instanceID, or none: a
	// volume that does not exist is NotFound, one of another owner
	// PermissionDenied, one attached to another instance a Conflict.
	// Attaching again what instanceID holds is allowed.
	Attach(instanceID string, reqs []VolumeRequest) ([]VolumeMount, error)
	// Detach frees what instanceID holds; detaching nothing does nothing.
	Detach(instanceID string)
	// RestoreAttachment records volumes an instance holds (from its
	// labels), whatever their owner.
	RestoreAttachment(instanceID string, names []string) error
	// Attachments lists the names of the volumes each instance holds.
	Attachments() map[string][]string
}

// GPURequest says which GPUs a rental wants: Count of any free, healthy GPUs,
// or exactly IDs (UUIDs, or NVML indexes the allocator turns into UUIDs), or
// one free MIG device of MIGProfile ("1g.10gb").
type GPURequest struct {
	Count int
	IDs   []string
	// MIGProfile is left out of the encoding when empty, so that the hash
	// of a spec without it is what it was before MIG rentals.
	MIGProfile string `json:",omitempty"`
}

// IsZero reports whether no GPU is asked for.
func (r GPURequest) IsZero() bool { return r.Count == 0 && len(r.IDs) == 0 && r.MIGProfile == "" }

// GPU is one GPU held by an instance.
type GPU struct {
	Index int
	UUID  string
}

// FormatGPULabels renders GPUs as the values of LabelGPUs and LabelGPUIndexes.
func FormatGPULabels(gpus []GPU) (uuids, indexes string) {
	u := make([]string, len(gpus))
	ix := make([]string, len(gpus))
	for i, g := range gpus {
		u[i], ix[i] = g.UUID, strconv.Itoa(g.Index)
	}
	return strings.Join(u, ","), strings.Join(ix, ",")
}

// ParseGPULabels reads GPUs back from LabelGPUs and LabelGPUIndexes.
func ParseGPULabels(uuids, indexes string) []GPU {
	if uuids == "" {
		return nil
	}
	u := strings.Split(uuids, ",")
	ix := strings.Split(indexes, ",")
	out := make([]GPU, len(u))
	for i := range u {
		out[i] = GPU{UUID: u[i], Index: -1}
		if i < len(ix) {
			if n, err := strconv.Atoi(ix[i]); err == nil {
				out[i].Index = n
			}
		}
	}
	return out
}
