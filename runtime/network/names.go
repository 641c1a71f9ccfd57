package network

import (
	"path/filepath"
	"strings"
)

// Named gives c every name of the rentals' network of RENTAL_NETWORK_NAME
// name, on both back ends: the CNI network, its bridge, the Docker
// network's bridge, the iptables chains' prefix, the namespaces' prefix and
// the state directory. The default network ("") takes the defaults. A
// second agent's network (any other name) takes names of its own, none of
// which the default agent takes for one of its own: its namespaces are not
// under the default prefix, and its journal and files are in a directory
// of its own under StateDir, since the default agent's sweep takes every
// namespace under its prefix and every file in its state directory.
func (c Config) Named(name string) Config {
	if name == "" {
		c.NetworkName = DefaultNetworkName
		c.Bridge = DefaultBridge
		c.DockerBridge = DefaultDockerBridge
		c.ChainPrefix = DefaultChainPrefix
		c.NetNSPrefix = DefaultNetNSPrefix
		return c
	}
	c.NetworkName = DefaultNetworkName + "-" + name
	c.Bridge = "hagent-" + name
	c.DockerBridge = "hadock-" + name
	c.ChainPrefix = "HA" + strings.ToUpper(name)
	c.NetNSPrefix = "hagent-" + name + "-"
	c.StateDir = filepath.Join(c.StateDir, c.NetworkName)
	return c
}
