package docker

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
	rentalnet "github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/network/dockernet"
)

// Docker network driver options the rentals' network is created with.
const (
	optICC        = "com.docker.network.bridge.enable_icc"
	optBridgeName = "com.docker.network.bridge.name"
	// dockerUserChain is where Docker lets others filter forwarded
	// traffic ahead of its own rules.
	dockerUserChain = dockernet.UserChain
)

// NetworkOptions put rentals on a user-defined bridge network of their own,
// with published ports and the agent's isolation rules. A Runtime without
// them gives rentals no network at all (--network none).
type NetworkOptions struct {
	// Name is the Docker network's name.
	Name string
	// Config is what the host's kernel sees of the network: its bridge,
	// subnet, the agent's chains around it, the egress lists and the
	// resolvers Docker's embedded resolver (127.0.0.11 in each rental)
	// forwards to (RENTAL_DNS; empty: the daemon's own).
	dockernet.Config
	// HostAddrs are the host addresses published ports are bound on;
	// empty: every IPv4 address of the host.
	HostAddrs []netip.Addr
	// PublicIP is announced to tenants as PUBLIC_IP; empty: not announced.
	PublicIP string
}

func (o *NetworkOptions) validate() error {
	var problems []string
	if o.Name == "" {
		problems = append(problems, "no network name")
	}
	problems = append(problems, o.Problems()...)
	for _, a := range o.HostAddrs {
		if !a.Is4() {
			problems = append(problems, fmt.Sprintf("host address %s: must be IPv4", a))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("docker network: %s: %w", strings.Join(problems, "; "), errdefs.ErrInvalidArgument)
	}
	o.Subnet = o.Subnet.Masked()
	return nil
}

// NetworkRules is the owner of the rentals' iptables rules, nil without a
// network: run its Run loop for as long as the agent serves (the daemon's
// network events and reconnections trigger it too).
func (r *Runtime) NetworkRules() *rentalnet.Rules { return r.rules }

// Network is the rentals' network as the host sees it (its rules, its
// status and readiness), nil without one.
func (r *Runtime) Network() *dockernet.Network { return r.network }

// IsolationAvailable reports why rentals on Docker cannot be isolated by the
// agent's rules here: nil when the DOCKER-USER chain exists, which a dockerd
// managing iptables (the default) makes at its start.
func IsolationAvailable() error { return dockernet.IsolationAvailable() }

// ensureRules writes what differs of the agent's chains and the jumps to
// them, first in DOCKER-USER and INPUT. Run before each start, so that a
// dockerd restarted since (it re-inserts its own jumps) does not get ahead
// of the isolation; the rules' Run loop keeps them in between.
func (r *Runtime) ensureRules(ctx context.Context) error {
	if err := dockernet.IsolationAvailable(); err != nil {
		return err
	}
	_, err := r.rules.Ensure(ctx)
	return err
}

// RemoveNetwork deletes the agent's chains and the jumps to them, and the
// rentals' Docker network when no container is on it. For uninstalling and
// for tests; rentals running meanwhile lose their isolation.
func (r *Runtime) RemoveNetwork(ctx context.Context) error {
	o := r.opts.Network
	if o == nil {
		return nil
	}
	var errs []string
	if _, err := r.client.NetworkRemove(ctx, o.Name, client.NetworkRemoveOptions{}); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, "remove docker network: "+err.Error())
	}
	if err := r.rules.Remove(ctx); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove rentals' network: %s", strings.Join(errs, "; "))
	}
	return nil
}

// ensureNetwork creates the rentals' network if it is missing and checks
// that one found is what the agent would have created, then writes the
// isolation rules.
func (r *Runtime) ensureNetwork(ctx context.Context) error {
	o := r.opts.Network
	res, err := r.client.NetworkInspect(ctx, o.Name, client.NetworkInspectOptions{})
	switch {
	case errdefs.IsNotFound(err):
		v4, v6 := true, false
		_, err = r.client.NetworkCreate(ctx, o.Name, client.NetworkCreateOptions{
			Driver:     "bridge",
			EnableIPv4: &v4,
			EnableIPv6: &v6,
			IPAM:       &network.IPAM{Config: []network.IPAMConfig{{Subnet: o.Subnet}}},
			Options:    map[string]string{optICC: "false", optBridgeName: o.Bridge},
			Labels:     map[string]string{runtime.LabelAgentID: r.opts.AgentID},
		})
		if err != nil && !errdefs.IsConflict(err) && !errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("create docker network %s: %w", o.Name, convertErr(err))
		}
		if res, err = r.client.NetworkInspect(ctx, o.Name, client.NetworkInspectOptions{}); err != nil {
			return fmt.Errorf("inspect docker network %s: %w", o.Name, convertErr(err))
		}
	case err != nil:
		return fmt.Errorf("inspect docker network %s: %w", o.Name, convertErr(err))
	}
	if err := checkNetwork(res.Network, o); err != nil {
		return err
	}
	if err := dockernet.DisableBridgeIPv6(o.Bridge); err != nil {
		return err
	}
	return r.ensureRules(ctx)
}

// checkNetwork refuses a network of the agent's name that lets rentals
// reach each other, has IPv6 (which the rules do not cover) or another
// subnet or bridge than configured.
func checkNetwork(n network.Inspect, o *NetworkOptions) error {
	var problems []string
	if n.Driver != "bridge" {
		problems = append(problems, "driver "+n.Driver)
	}
	if n.Options[optICC] != "false" {
		problems = append(problems, "inter-container traffic on")
	}
	if n.Options[optBridgeName] != o.Bridge {
		problems = append(problems, fmt.Sprintf("bridge %q", n.Options[optBridgeName]))
	}
	if n.EnableIPv6 {
		problems = append(problems, "IPv6 on")
	}
	if len(n.IPAM.Config) != 1 || n.IPAM.Config[0].Subnet != o.Subnet {
		problems = append(problems, fmt.Sprintf("subnets %v", n.IPAM.Config))
	}
	if len(problems) > 0 {
		return fmt.Errorf("docker network %s exists but is not the rentals' network of %s (%s): remove it or choose another name: %w",
			o.Name, o.Subnet, strings.Join(problems, "; "), errdefs.ErrFailedPrecondition)
	}
	return nil
}

// portBindings publishes exactly the reserved host ports, on each host
// address.
func (o *NetworkOptions) portBindings(mappings []hostport.Mapping) (network.PortSet, network.PortMap, error) {
	addrs := o.HostAddrs
	if len(addrs) == 0 {
		addrs = []netip.Addr{netip.IPv4Unspecified()}
	}
	exposed, bindings := network.PortSet{}, network.PortMap{}
	for _, m := range mappings {
		p, ok := network.PortFrom(m.ContainerPort, network.IPProtocol(m.Protocol))
		if !ok {
			return nil, nil, fmt.Errorf("port %s/%d: %w", m.Protocol, m.ContainerPort, errdefs.ErrInvalidArgument)
		}
		exposed[p] = struct{}{}
		for _, a := range addrs {
			bindings[p] = append(bindings[p], network.PortBinding{HostIP: a, HostPort: strconv.Itoa(int(m.HostPort))})
		}
	}
	return exposed, bindings, nil
}

// applyNetwork puts the container on the rentals' network with its ports
// published, and tells it its ports.
func (o *NetworkOptions) applyNetwork(cfg *container.Config, host *container.HostConfig, mappings []hostport.Mapping) error {
	exposed, bindings, err := o.portBindings(mappings)
	if err != nil {
		return err
	}
	host.NetworkMode = container.NetworkMode(o.Name)
	host.DNS = o.DNS
	if len(mappings) > 0 {
		cfg.ExposedPorts, host.PortBindings = exposed, bindings
	}
	cfg.Env = append(cfg.Env, hostport.Env(mappings, o.PublicIP)...)
	return nil
}

// verifyPublished checks that the daemon will publish exactly the reserved
// ports, each on the configured addresses, and nothing more.
func (o *NetworkOptions) verifyPublished(c container.InspectResponse, mappings []hostport.Mapping) error {
	_, want, err := o.portBindings(mappings)
	if err != nil {
		return err
	}
	got := c.HostConfig.PortBindings
	if c.HostConfig.PublishAllPorts || len(got) != len(want) {
		return fmt.Errorf("published ports %v, want %v", got, want)
	}
	for p, wb := range want {
		gb := got[p]
		if len(gb) != len(wb) {
			return fmt.Errorf("published ports %v, want %v", got, want)
		}
		for i := range wb {
			if gb[i].HostPort != wb[i].HostPort || gb[i].HostIP.Unmap() != wb[i].HostIP {
				return fmt.Errorf("published ports %v, want %v", got, want)
			}
		}
	}
	if string(c.HostConfig.NetworkMode) != o.Name {
		return fmt.Errorf("network %q, want %q", c.HostConfig.NetworkMode, o.Name)
	}
	if !slices.Equal(c.HostConfig.DNS, o.DNS) {
		return fmt.Errorf("resolvers %v, want %v", c.HostConfig.DNS, o.DNS)
	}
	return nil
}
