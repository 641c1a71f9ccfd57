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

// Event is e as the hub's event.
func Event(e gpu.Event) events.Event {
	out := events.Event{
		Type:       e.Type,
		InstanceID: e.InstanceID,
		Status:     e.Status,
		GPU:        e.GPU,
		Message:    e.Message,
	}
	if e.Fault != nil {
		f := events.GPUFault(*e.Fault)
		out.Fault = &f
	}
	return out
}
