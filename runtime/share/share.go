// Package share divides the host's memory and CPUs among rentals: an
// instance that names no limit gets a share of what is allocatable
// proportional to the GPUs it holds, and a start whose memory would
// oversubscribe the host is refused. Its Reservations are a
// runtime.ReservationKind, so that the Lifecycle accounts for them under the
// same rules as GPUs: two concurrent starts cannot both take the last of
// the memory. internal/agent builds it; server/reporter reads its Usage.
package share

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

// Labels recording an instance's share, so that the accounting is rebuilt
// from the containers after a restart.
const (
	LabelMemoryMB = runtime.LabelPrefix + "resources.memory-mb"
	LabelCPUs     = runtime.LabelPrefix + "resources.cpus"
)

// Defaults of Options left zero.
const (
	// DefaultShmFraction is the part of a GPU rental's memory limit its
	// /dev/shm may grow to: PyTorch's DataLoader passes batches through
	// it, and fails on the usual 64 MiB.
	DefaultShmFraction = 0.5
	// cpuRentalDivisor sizes a CPU-only rental on a host without GPUs: an
	// eighth of the host.
	cpuRentalDivisor = 8
)

// Options describe what the host allocates to rentals.
type Options struct {
	// MemoryMB and CPUs are allocatable: the host's, less what is kept for
	// the system, the agent and containerd. See Allocatable.
	MemoryMB int64
	CPUs     float64
	// GPUs is the number of GPUs on the host; a rental holding n of them
	// gets n/GPUs of what is allocatable.
	GPUs int
	// CPURentalMemoryMB and CPURentalCPUs are the share of a rental
	// without GPUs. Zero: one GPU's share, or on a host without GPUs an
	// eighth of what is allocatable.
	CPURentalMemoryMB int64
	CPURentalCPUs     float64
	// Pids is every rental's pids limit unless it names one (default
	// runtime.DefaultPids).
	Pids int64
	// ShmFraction sizes a GPU rental's /dev/shm as a fraction of its memory
	// limit unless it names a size (default DefaultShmFraction; below zero:
	// the runtime's 64 MiB).
	ShmFraction float64
}

// Allocatable is what a host of totalMemMB and totalCPUs allocates to
// rentals once reservedMemMB and reservedCPUs are kept back. It fails when
// nothing would be left.
func Allocatable(totalMemMB int64, totalCPUs float64, reservedMemMB int64, reservedCPUs float64) (int64, float64, error) {
	mem, cpus := totalMemMB-reservedMemMB, totalCPUs-reservedCPUs
	if mem < 64 {
		return 0, 0, fmt.Errorf("reserving %d MiB of the host's %d MiB leaves too little memory for rentals", reservedMemMB, totalMemMB)
	}
	if cpus < 0.1 {
		return 0, 0, fmt.Errorf("reserving %g of the host's %g CPUs leaves too little for rentals", reservedCPUs, totalCPUs)
	}
	return mem, cpus, nil
}

// Usage is what is allocatable and how much of it rentals hold.
type Usage struct {
	AllocatableMemoryMB int64
	AllocatableCPUs     float64
	AllocatedMemoryMB   int64
	AllocatedCPUs       float64
	// Instances counts the rentals holding a share.
	Instances int
}

// Reservations account for every rental's memory and CPUs.
type Reservations struct {
	opts Options

	mu   sync.Mutex
	held map[string]holding
}

type holding struct {
	memoryMB int64
	cpus     float64
}

var _ runtime.ReservationKind = (*Reservations)(nil)

// New accounts for a host described by opts.
func New(opts Options) *Reservations {
	if opts.Pids <= 0 {
		opts.Pids = runtime.DefaultPids
	}
	if opts.ShmFraction == 0 {
		opts.ShmFraction = DefaultShmFraction
	}
	return &Reservations{opts: opts, held: map[string]holding{}}
}

// AdmissionError refuses a start that would oversubscribe the host. It
// names the request's field and is an errdefs.ResourceExhausted.
type AdmissionError struct {
	Field string
	Msg   string
}

func (e *AdmissionError) Error() string { return e.Msg }

// ErrorField names the request field at fault.
func (e *AdmissionError) ErrorField() string { return e.Field }

// Unwrap makes it an errdefs.ResourceExhausted.
func (e *AdmissionError) Unwrap() error { return errdefs.ErrResourceExhausted }

// Name implements runtime.ReservationKind.
func (*Reservations) Name() string { return "resources" }

// Limits returns what spec gets: its own limits where it names them, its
// share of the host where it does not.
func (r *Reservations) Limits(spec runtime.InstanceSpec) runtime.Resources {
	lim := spec.Resources
	memShare, cpuShare := r.defaultShare(len(spec.GPUs))
	if lim.MemoryMB <= 0 {
		lim.MemoryMB = memShare
	}
	if lim.CPUs <= 0 {
		lim.CPUs = cpuShare
	}
	if lim.Pids <= 0 {
		lim.Pids = r.opts.Pids
	}
	if lim.ShmMB <= 0 && len(spec.GPUs) > 0 && r.opts.ShmFraction > 0 {
		lim.ShmMB = max(64, int64(float64(lim.MemoryMB)*r.opts.ShmFraction))
	}
	return lim
}

func (r *Reservations) defaultShare(gpus int) (int64, float64) {
	o := r.opts
	if gpus > 0 && o.GPUs > 0 {
		return o.MemoryMB * int64(gpus) / int64(o.GPUs), roundCPUs(o.CPUs * float64(gpus) / float64(o.GPUs))
	}
	div := o.GPUs
	if div <= 0 {
		div = cpuRentalDivisor
	}
	mem, cpus := o.CPURentalMemoryMB, o.CPURentalCPUs
	if mem <= 0 {
		mem = o.MemoryMB / int64(div)
	}
	if cpus <= 0 {
		cpus = roundCPUs(o.CPUs / float64(div))
	}
	return mem, cpus
}

// roundCPUs keeps two decimals (the smallest CFS quota the kernel takes is
// a hundredth of a CPU) so that labels and quotas read plainly.
func roundCPUs(c float64) float64 { return max(0.01, math.Floor(c*100)/100) }

// Reserve implements runtime.ReservationKind. It fills spec.Limits and
// refuses, with an *AdmissionError, a rental whose memory does not fit in
// what the others leave.
func (r *Reservations) Reserve(spec *runtime.InstanceSpec) (map[string]string, error) {
	lim := r.Limits(*spec)
	r.mu.Lock()
	defer r.mu.Unlock()
	var used int64
	for id, h := range r.held {
		if id != spec.ID {
			used += h.memoryMB
		}
	}
	if free := r.opts.MemoryMB - used; lim.MemoryMB > free {
		return nil, &AdmissionError{Field: "resources", Msg: fmt.Sprintf(
			"memory of %d MiB does not fit: %d of the host's %d allocatable MiB are free", lim.MemoryMB, max(free, 0), r.opts.MemoryMB)}
	}
	h := holding{memoryMB: lim.MemoryMB, cpus: lim.CPUs}
	r.held[spec.ID] = h
	spec.Limits = lim
	return h.labels(), nil
}

func (h holding) labels() map[string]string {
	return map[string]string{
		LabelMemoryMB: strconv.FormatInt(h.memoryMB, 10),
		LabelCPUs:     strconv.FormatFloat(h.cpus, 'f', -1, 64),
	}
}

// Release implements runtime.ReservationKind.
func (r *Reservations) Release(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.held, id)
}

// Restore implements runtime.ReservationKind. A container without the
// labels (made before shares were accounted) holds nothing.
func (r *Reservations) Restore(id string, labels map[string]string) error {
	ms, cs := labels[LabelMemoryMB], labels[LabelCPUs]
	if ms == "" && cs == "" {
		return nil
	}
	mem, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || mem < 0 {
		return fmt.Errorf("label %s=%q: %w", LabelMemoryMB, ms, errdefs.ErrInvalidArgument)
	}
	cpus, err := strconv.ParseFloat(cs, 64)
	if err != nil || cpus < 0 {
		return fmt.Errorf("label %s=%q: %w", LabelCPUs, cs, errdefs.ErrInvalidArgument)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held[id] = holding{memoryMB: mem, cpus: cpus}
	return nil
}

// Holdings implements runtime.ReservationKind.
func (r *Reservations) Holdings() map[string]map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]map[string]string, len(r.held))
	for id, h := range r.held {
		out[id] = h.labels()
	}
	return out
}

// Records implements runtime.ReservationKind.
func (*Reservations) Records(key string) bool {
	return strings.HasPrefix(key, runtime.LabelPrefix+"resources.")
}

// Usage reports what is allocatable and allocated now.
func (r *Reservations) Usage() Usage {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := Usage{AllocatableMemoryMB: r.opts.MemoryMB, AllocatableCPUs: r.opts.CPUs, Instances: len(r.held)}
	for _, h := range r.held {
		u.AllocatedMemoryMB += h.memoryMB
		u.AllocatedCPUs += h.cpus
	}
	u.AllocatedCPUs = math.Round(u.AllocatedCPUs*100) / 100
	return u
}
