package network

import (
	"net/netip"
	"slices"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// Prepare returns the attachment Setup will give instance id, without its
// address: the namespace path, host name and generated files. It writes the
// files (hosts without the instance's address, which Setup adds), so that
// the container's spec can name them, and the confinement check can see
// them, before the network exists. Nothing else is made; Teardown or Sweep
// removes the files.
func (n *Network) Prepare(id string, ports []hostport.Mapping) (Attachment, error) {
	if err := checkID(id); err != nil {
		return Attachment{}, err
	}
	a := Attachment{ID: id, NetNS: n.NetNSPath(id), Ports: slices.Clone(ports), Hostname: Hostname(id)}
	var err error
	if a.Files, err = n.writeFiles(id, a.Hostname, netip.Addr{}); err != nil {
		return Attachment{}, err
	}
	return a, nil
}
