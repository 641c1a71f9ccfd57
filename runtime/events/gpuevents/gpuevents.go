package gpuevents

import (
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime/events"
)

// Publisher is a gpu.Publisher that publishes each GPU event as the hub's
// event of the same type.
type Publisher struct{ Next events.Publisher }

var _ gpu.Publisher = Publisher{}

// To passes the GPU inventory's events on to next.
func To(next events.Publisher) Publisher { return Publisher{Next: next} }

// Publish implements gpu.Publisher.
func (p Publisher) Publish(e gpu.Event) {
	p.Next.Publish(Event(e))
}

// Event is e as the hub's event: an instance.gpu_fault with its fault for
// a gpu.EventFault, else a gpu.health (the only other type the inventory
// reports). Each is a literal of its own, so that the event stream's
// document can be checked against the fields each sets.
func Event(e gpu.Event) events.Event {
	if e.Type == gpu.EventFault {
		var fault *events.GPUFault
		if e.Fault != nil {
			f := events.GPUFault(*e.Fault)
			fault = &f
		}
		return events.Event{
			Type:       events.TypeInstanceGPUFault,
			InstanceID: e.InstanceID,
			GPU:        e.GPU,
			Message:    e.Message,
			Fault:      fault,
		}
	}
	return events.Event{
		Type:       events.TypeGPUHealth,
		InstanceID: e.InstanceID,
		Status:     e.Status,
		GPU:        e.GPU,
		Message:    e.Message,
	}
}
