package runtime

import (
	"github.com/host-agent/host-agent/runtime/hostport"
)

// PortsFromLabels reads the published ports a container's labels record;
// nothing when the label is missing or unreadable.
func PortsFromLabels(labels map[string]string) []hostport.Mapping {
	m, err := hostport.Parse(labels[LabelPorts])
	if err != nil {
		return nil
	}
	return m
}
