package runtime

import (
	"maps"
	"strconv"
	"strings"
)

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
	// Name names the kind in logs and errors ("gpus", "ports").
	Name() string
	// Reserve reserves for spec; it returns nil labels when spec asks for
	// nothing of this kind. On error nothing is held.
	Reserve(spec *InstanceSpec) (labels map[string]string, err error)
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

// GPUReservations is the ReservationKind of GPUs: it reserves
// spec.GPURequest, hands the GPUs to the back end in spec.GPUs (which it
// injects) and records them in LabelGPUs and LabelGPUIndexes.
type GPUReservations struct{ Alloc GPUAllocator }

var _ ReservationKind = GPUReservations{}

// Name implements ReservationKind.
func (GPUReservations) Name() string { return "gpus" }

// Reserve implements ReservationKind.
func (g GPUReservations) Reserve(spec *InstanceSpec) (map[string]string, error) {
	spec.GPUs = nil
	if spec.GPURequest.IsZero() {
		return nil, nil
	}
	gpus, err := g.Alloc.Reserve(spec.ID, spec.GPURequest)
	if err != nil {
		return nil, err
	}
	spec.GPUs = gpus
	return gpuLabels(gpus), nil
}

// Release implements ReservationKind.
func (g GPUReservations) Release(id string) { g.Alloc.Release(id) }

// Restore implements ReservationKind.
func (g GPUReservations) Restore(id string, labels map[string]string) error {
	gpus := ParseGPULabels(labels[LabelGPUs], labels[LabelGPUIndexes])
	if len(gpus) == 0 {
		return nil
	}
	uuids := make([]string, len(gpus))
	for i, d := range gpus {
		uuids[i] = d.UUID
	}
	return g.Alloc.Restore(id, uuids)
}

// Holdings implements ReservationKind.
func (g GPUReservations) Holdings() map[string]map[string]string {
	out := map[string]map[string]string{}
	for id, gpus := range g.Alloc.Holders() {
		if len(gpus) > 0 {
			out[id] = gpuLabels(gpus)
		}
	}
	return out
}

// Records implements ReservationKind.
func (GPUReservations) Records(key string) bool { return key == LabelGPUs || key == LabelGPUIndexes }

func gpuLabels(gpus []GPU) map[string]string {
	u, ix := FormatGPULabels(gpus)
	return map[string]string{LabelGPUs: u, LabelGPUIndexes: ix}
}

// RecordedByKind returns the labels among all that record a reservation of
// kind k. Every kind's labels share the prefix LabelPrefix + k.Name() + ".",
// except the GPUs', whose labels predate that rule.
func RecordedByKind(k ReservationKind, all map[string]string) map[string]string {
	out := map[string]string{}
	for key, v := range all {
		if k.Records(key) {
			out[key] = v
		}
	}
	return out
}

// mergeLabels adds src to dst.
func mergeLabels(dst, src map[string]string) { maps.Copy(dst, src) }

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
