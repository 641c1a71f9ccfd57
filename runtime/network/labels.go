package network

import (
	"fmt"
	"net/netip"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// Label keys for what a rental's network holds, under the agent's label
// prefix (runtime.LabelPrefix; a test holds the two equal). The lifecycle
// layer writes LabelPorts before CNI ADD, so that a port is never handed out
// twice across restarts, and LabelNetNS and LabelIP once Setup returns.
const (
	labelPrefix = "host-agent.io/"
	// LabelPorts lists the published ports: "tcp/22:40017,udp/8888:40018".
	LabelPorts = labelPrefix + "ports"
	// LabelNetNS is the path of the pinned network namespace.
	LabelNetNS = labelPrefix + "netns"
	// LabelIP is the instance's address on the rentals' bridge.
	LabelIP = labelPrefix + "ip"
)

// Labels are the container labels recording a.
func (a Attachment) Labels() map[string]string {
	l := map[string]string{LabelNetNS: a.NetNS}
	if len(a.Ports) > 0 {
		l[LabelPorts] = hostport.Format(a.Ports)
	}
	if a.IP.IsValid() {
		l[LabelIP] = a.IP.String()
	}
	return l
}

// PortsFromLabels reads the published ports a container's labels record.
func PortsFromLabels(labels map[string]string) ([]hostport.Mapping, error) {
	m, err := hostport.Parse(labels[LabelPorts])
	if err != nil {
		return nil, fmt.Errorf("label %s: %w", LabelPorts, err)
	}
	return m, nil
}

// FromLabels reads back what Labels wrote, for the instance id. Labels
// without a network (an instance created before networking) give an
// Attachment with no NetNS.
func FromLabels(id string, labels map[string]string) (Attachment, error) {
	a := Attachment{ID: id, NetNS: labels[LabelNetNS]}
	var err error
	if a.Ports, err = PortsFromLabels(labels); err != nil {
		return Attachment{}, err
	}
	if s := labels[LabelIP]; s != "" {
		if a.IP, err = netip.ParseAddr(s); err != nil {
			return Attachment{}, fmt.Errorf("label %s: %w", LabelIP, err)
		}
	}
	return a, nil
}
