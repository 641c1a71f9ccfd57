package runtime

import (
	"fmt"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// PortReservations is the ReservationKind of published ports: it reserves a
// host port for each of spec.Ports from the allocator's range, hands the
// mappings to the back end in spec.PublishedPorts (which it publishes) and
// records them in LabelPorts, before anything of the instance is created,
// so that a host port is never handed out twice, across restarts too.
type PortReservations struct{ Alloc *hostport.Allocator }

var _ ReservationKind = PortReservations{}

// Name implements ReservationKind.
func (PortReservations) Name() string { return "ports" }

// Reserve implements ReservationKind. An exhausted range is a Conflict
// naming the ports field.
func (p PortReservations) Reserve(spec *InstanceSpec) (map[string]string, error) {
	spec.PublishedPorts = nil
	if len(spec.Ports) == 0 {
		return nil, nil
	}
	m, err := p.Alloc.Reserve(spec.ID, spec.Ports)
	if err != nil {
		return nil, err
	}
	spec.PublishedPorts = m
	return map[string]string{LabelPorts: hostport.Format(m)}, nil
}

// Release implements ReservationKind.
func (p PortReservations) Release(id string) { p.Alloc.Release(id) }

// Restore implements ReservationKind.
func (p PortReservations) Restore(id string, labels map[string]string) error {
	m, err := hostport.Parse(labels[LabelPorts])
	if err != nil {
		return fmt.Errorf("label %s: %w", LabelPorts, err)
	}
	if len(m) == 0 {
		return nil
	}
	return p.Alloc.Restore(id, m)
}

// Holdings implements ReservationKind.
func (p PortReservations) Holdings() map[string]map[string]string {
	out := map[string]map[string]string{}
	for id, m := range p.Alloc.Holders() {
		if len(m) > 0 {
			out[id] = map[string]string{LabelPorts: hostport.Format(m)}
		}
	}
	return out
}

// Records implements ReservationKind.
func (PortReservations) Records(key string) bool { return key == LabelPorts }

// PortsFromLabels reads the published ports a container's labels record;
// nothing when the label is missing or unreadable.
func PortsFromLabels(labels map[string]string) []hostport.Mapping {
	m, err := hostport.Parse(labels[LabelPorts])
	if err != nil {
		return nil
	}
	return m
}
