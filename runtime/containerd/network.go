package containerd

import (
	"context"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/network"
)

// Network gives rentals their network; network.Network provides it. The
// back end calls it for one instance at a time (under the lifecycle's
// lock): Prepare before the container is created, Setup (CNI ADD) once the
// container and its labels recording the ports exist and before its task is
// created, Teardown (CNI DEL, with the same ports) after the task is gone and
// before the container is deleted, and Sweep when the agent starts.
type Network interface {
	Prepare(id string, ports []hostport.Mapping) (network.Attachment, error)
	Setup(ctx context.Context, id string, ports []hostport.Mapping, hostname string, opts ...network.SetupOption) (network.Attachment, error)
	Teardown(ctx context.Context, id string, ports []hostport.Mapping) error
	Sweep(ctx context.Context, live func(id string) bool) (network.SweepResult, error)
}

// pinningNetwork is a Network that says when an instance's namespace is
// pinned during Setup (network.Network.SetupPinned), so that its task can
// be created while ADD runs.
type pinningNetwork interface {
	SetupPinned(ctx context.Context, id string, ports []hostport.Mapping, hostname string, pinned func(), opts ...network.SetupOption) (network.Attachment, error)
}

var _ pinningNetwork = (*network.Network)(nil)

// reattachingNetwork is a Network that can set an instance up again in the
// namespace its created task is in (network.Network.SetupAgain).
type reattachingNetwork interface {
	SetupAgain(ctx context.Context, id string, ports []hostport.Mapping, hostname string, opts ...network.SetupOption) (network.Attachment, error)
}

var _ reattachingNetwork = (*network.Network)(nil)

// setupNetworkAgain is setupNetwork for a container whose task was created
// beside a setup the agent did not see finish: the task stays, in its
// namespace, and ADD runs again there.
func (r *Runtime) setupNetworkAgain(ctx context.Context, c containerd.Container, ports []hostport.Mapping, bw runtime.Bandwidth) error {
	rn, ok := r.opts.Network.(reattachingNetwork)
	if !ok {
		return r.setupNetwork(ctx, c, ports, bw, nil)
	}
	a, err := rn.SetupAgain(ctx, c.ID(), ports, network.Hostname(c.ID()), bandwidthOption(bw))
	if err != nil {
		return fmt.Errorf("set up network: %w", err)
	}
	if _, err := c.SetLabels(ctx, map[string]string{runtime.LabelIP: a.IP.String()}); err != nil {
		return fmt.Errorf("record address: %w", convertErr(err))
	}
	r.fault(FaultAfterNetworkSetup)
	return nil
}

var _ runtime.LeftoverSweeper = (*Runtime)(nil)

// SweepLeftovers implements runtime.LeftoverSweeper: it tears down every
// network attachment (namespace, lease, portmap rules, files) of an
// instance without a container, left by an agent that died between CNI ADD
// and creating the container, or between deleting it and CNI DEL.
func (r *Runtime) SweepLeftovers(ctx context.Context, live []runtime.Instance) error {
	if r.opts.Network == nil {
		return nil
	}
	ids := make(map[string]bool, len(live))
	for _, inst := range live {
		ids[inst.ID] = true
	}
	res, err := r.opts.Network.Sweep(ctx, func(id string) bool { return ids[id] })
	if len(res.TornDown) > 0 {
		r.log.Warn("tore down the network of instances without a container", "instances", res.TornDown)
	}
	if err != nil {
		return fmt.Errorf("sweep rentals' network: %w", err)
	}
	return nil
}

// setupNetwork attaches container c to the rentals' network (DEL before
// ADD, a failed ADD followed by DEL, inside Setup), with its traffic limited
// to bw by the CNI bandwidth plugin, and records its address.
// pinned, when not nil, is called once the namespace the task joins is
// pinned for good (before Setup returns, or at its start where the Network
// cannot say); it is not called when the setup fails before.
func (r *Runtime) setupNetwork(ctx context.Context, c containerd.Container, ports []hostport.Mapping, bw runtime.Bandwidth, pinned func()) error {
	var a network.Attachment
	var err error
	if pn, ok := r.opts.Network.(pinningNetwork); ok && pinned != nil {
		a, err = pn.SetupPinned(ctx, c.ID(), ports, network.Hostname(c.ID()), pinned, bandwidthOption(bw))
	} else {
		a, err = r.opts.Network.Setup(ctx, c.ID(), ports, network.Hostname(c.ID()), bandwidthOption(bw))
		if err == nil && pinned != nil {
			pinned()
		}
	}
	if err != nil {
		return fmt.Errorf("set up network: %w", err)
	}
	if _, err := c.SetLabels(ctx, map[string]string{runtime.LabelIP: a.IP.String()}); err != nil {
		return fmt.Errorf("record address: %w", convertErr(err))
	}
	r.fault(FaultAfterNetworkSetup)
	return nil
}

// bandwidthOption limits a rental's traffic to bw (the CNI bandwidth
// plugin); zero: unlimited.
func bandwidthOption(bw runtime.Bandwidth) network.SetupOption {
	return network.WithBandwidth(network.Bandwidth{EgressMbps: bw.EgressMbps, IngressMbps: bw.IngressMbps})
}

// teardownNetwork removes instance id's network, with the ports its labels
// record, on a context of its own so that a start called off still cleans
// up.
func (r *Runtime) teardownNetwork(ctx context.Context, id string, labels map[string]string) error {
	if r.opts.Network == nil || labels[runtime.LabelNetNS] == "" {
		return nil
	}
	r.fault(FaultBeforeNetworkTeardown)
	if err := r.opts.Network.Teardown(ctx, id, runtime.PortsFromLabels(labels)); err != nil {
		return fmt.Errorf("tear down network: %w", err)
	}
	return nil
}

// networkPlan adds the generated resolv.conf, hosts and hostname to the
// device plan as read-only mounts: the only host files a rental sees
// besides its GPUs' driver files, checked by the same confinement check.
func networkPlan(plan runtime.DevicePlan, a network.Attachment) runtime.DevicePlan {
	for _, m := range a.Files.Mounts() {
		plan.Mounts = append(plan.Mounts, runtime.PlanMount{HostPath: m.Source, ContainerPath: m.Destination, Options: m.Options})
	}
	return plan
}
