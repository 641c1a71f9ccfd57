package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/host-agent/host-agent/runtime/docker"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/network/dockernet"
	"github.com/host-agent/host-agent/server"
	"github.com/host-agent/host-agent/server/reporter"
)

// newNetwork checks the rentals' network configuration against the host,
// creates the bridge and writes the agent's rules. Leftovers of instances
// without a container are swept later, by the lifecycle's restore, once the
// containers are known.
func newNetwork(ctx context.Context, cfg config, logger *slog.Logger) (*network.Network, error) {
	nc := networkConfig(cfg)
	nc.Logger = logger
	n, err := network.New(nc)
	if err != nil {
		return nil, fmt.Errorf("rentals' network: %w", err)
	}
	if err := n.Init(ctx); err != nil {
		return nil, fmt.Errorf("rentals' network: %w", err)
	}
	return n, nil
}

// claimPorts records this agent's port range for the other agents on the
// host, and refuses a range that overlaps a running agent's of another
// network (neither would see the ports the other publishes) or a second
// agent of the same network. Where the claim cannot be written at all, the
// agent starts and says so.
func claimPorts(cfg config, logger *slog.Logger) (func(), error) {
	// The default agent's claim is recorded under no name, as agents of
	// this host running already record and look for it.
	name := ""
	if cfg.Network.Name != "" {
		name = networkConfig(cfg).NetworkName
	}
	release, err := network.ClaimPortRange(network.DefaultClaimDir, name, cfg.Network.HostPortRange)
	switch {
	case errors.Is(err, network.ErrPortRangeOverlap):
		return nil, &configError{"HOST_PORT_RANGE", err.Error()}
	case errors.Is(err, network.ErrNetworkInUse):
		return nil, &configError{"RENTAL_NETWORK_NAME", err.Error()}
	case err != nil:
		logger.Warn("host port range not recorded: another agent on this host cannot see it", "dir", network.DefaultClaimDir, "error", err)
		return func() {}, nil
	}
	return release, nil
}

// networkConfig is the rentals' network as configured, its names those of
// RENTAL_NETWORK_NAME (a second agent on the host: every name of its
// network is its own).
func networkConfig(cfg config) network.Config {
	return network.Config{
		Subnet:        cfg.Network.RentalSubnet,
		PluginDirs:    cfg.Network.CNIPluginDirs,
		StateDir:      filepath.Join(cfg.StateDir, "network"),
		BlockedEgress: cfg.Network.BlockedEgress,
		AllowedEgress: cfg.Network.AllowedEgress,
		DNS:           cfg.Network.RentalDNS,
	}.Named(cfg.Network.Name)
}

// dockerNetwork is the rentals' network on Docker: a user-defined bridge
// network named, bridged and filtered apart from the CNI network's, on the
// same subnet and egress lists.
func dockerNetwork(cfg config) *docker.NetworkOptions {
	nc := networkConfig(cfg)
	o := &docker.NetworkOptions{Name: nc.NetworkName, Config: dockernet.Config{
		Bridge:        nc.DockerBridge,
		Subnet:        nc.Subnet,
		ChainPrefix:   nc.ChainPrefix,
		BlockedEgress: nc.BlockedEgress,
		AllowedEgress: nc.AllowedEgress,
		DNS:           nc.DNS,
	}}
	if o.BlockedEgress == nil {
		o.BlockedEgress = network.DefaultBlockedEgress
	}
	if cfg.Network.PublicIP.IsValid() {
		o.PublicIP = cfg.Network.PublicIP.String()
	}
	return o
}

// networkRules is the owner of the rentals' iptables rules on either back
// end, nil when rentals get no network of the agent's. On Docker the rules
// are written here, so that rentals running from before the agent's start
// are isolated before the next start.
func networkRules(ctx context.Context, rentalNet *network.Network, backend any, logger *slog.Logger) *network.Rules {
	if rentalNet != nil {
		return rentalNet.Rules()
	}
	d, ok := backend.(*docker.Runtime)
	if !ok || d.NetworkRules() == nil {
		return nil
	}
	if _, err := d.NetworkRules().Ensure(ctx); err != nil {
		logger.Error("writing the rentals' iptables rules on Docker", "error", err)
	}
	return d.NetworkRules()
}

// networkChecker is what /readyz checks of the rentals' network: on
// containerd the CNI network (plugins, tools and rules), on Docker the
// Docker network (tools, Docker's chain and rules); a nil interface
// without a network.
func networkChecker(n hostNetwork) server.NetworkChecker {
	if n == nil {
		return nil
	}
	return n
}

// hostNetwork is the rentals' network of either back end, as the host
// report and readiness see it: *network.Network on containerd,
// *dockernet.Network on Docker.
type hostNetwork interface {
	Status() network.Status
	Check(ctx context.Context) error
}

// rentalsNetwork is the rentals' network of the back end in use, nil when
// rentals get none of the agent's.
func rentalsNetwork(rentalNet *network.Network, backend any) hostNetwork {
	if rentalNet != nil {
		return rentalNet
	}
	if d, ok := backend.(*docker.Runtime); ok && d.Network() != nil {
		return d.Network()
	}
	return nil
}

// ruleCollectors is the repairs counter, where rules are kept.
func ruleCollectors(rules *network.Rules) []prometheus.Collector {
	if rules == nil {
		return nil
	}
	return []prometheus.Collector{rules.Collector()}
}

// networkInfo describes the rentals' network for the host report, on
// either back end; nil (no network in the report) when rentals get none of
// the agent's.
func networkInfo(cfg config, n hostNetwork, ports *hostport.Allocator) func() *reporter.NetworkInfo {
	if n == nil {
		return nil
	}
	return func() *reporter.NetworkInfo {
		st := n.Status()
		info := &reporter.NetworkInfo{
			Subnet:    st.Subnet,
			Bridge:    st.Bridge,
			PortRange: ports.Range().String(),
			PortsFree: ports.Free(),
			DNS:       st.DNS,
		}
		if cfg.Network.PublicIP.IsValid() {
			info.PublicIP = cfg.Network.PublicIP.String()
		}
		return info
	}
}

// claimSubnet gives the rentals' subnet to the back end in use. The agent's
// bridge of the other back end, left by an agent that ran on it, routes the
// same subnet: while no rental is on it, it is taken down, since the kernel
// would send the rentals' replies to the older of the two routes. The
// bridge of the back end in use is brought up again on Docker, whose
// daemon does not do so itself (on containerd the CNI plugin does).
// Failures are logged: CheckSubnet then refuses what still conflicts.
func claimSubnet(cfg config, rtName string, logger *slog.Logger) {
	nc := networkConfig(cfg)
	mine, other := nc.Bridge, nc.DockerBridge
	if rtName == runtimeDocker {
		mine, other = other, mine
		if up, err := network.ReclaimBridge(mine); err != nil {
			logger.Warn("the rentals' bridge could not be brought up", "bridge", mine, "error", err)
		} else if up {
			logger.Info("brought up the rentals' bridge", "bridge", mine)
		}
	}
	if down, err := network.YieldBridge(other, cfg.Network.RentalSubnet); err != nil {
		logger.Warn("the other back end's bridge could not be taken down", "bridge", other, "error", err)
	} else if down {
		logger.Info("took down the other back end's idle bridge: its route to the rentals' subnet would take their replies",
			"bridge", other, "subnet", cfg.Network.RentalSubnet.String())
	}
}
