package docker

import (
	"context"
	"errors"
	"fmt"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	rentalnet "github.com/host-agent/host-agent/runtime/network"
)

var _ runtime.LeftoverSweeper = (*Runtime)(nil)

// shape limits a started rental's traffic to bw with tc on the host's end
// of its veth (dockerd has no bandwidth option): a token bucket for what
// it receives, an ifb device with one for what it sends.
func (r *Runtime) shape(c container.InspectResponse, bw runtime.Bandwidth) error {
	if bw.IsZero() {
		return nil
	}
	if r.opts.Network == nil {
		// The rental has no network: nothing to limit.
		return nil
	}
	if c.State == nil || c.State.Pid == 0 {
		return fmt.Errorf("limit bandwidth: container %s is not running", c.ID)
	}
	host, err := rentalnet.HostVeth(fmt.Sprintf("/proc/%d/ns/net", c.State.Pid), "eth0")
	if err != nil {
		return fmt.Errorf("limit bandwidth: %w", err)
	}
	id := r.idOf(c)
	if err := rentalnet.Shape(host, rentalnet.IFBName(id), r.ifbOwner()+id, rentalnet.Bandwidth{EgressMbps: bw.EgressMbps, IngressMbps: bw.IngressMbps}); err != nil {
		return fmt.Errorf("limit bandwidth: %w", err)
	}
	return nil
}

// idOf is the instance ID a rental's container records.
func (r *Runtime) idOf(c container.InspectResponse) string {
	if c.Config != nil {
		return c.Config.Labels[runtime.LabelInstanceID]
	}
	return ""
}

// shapeStarted applies the limits recorded in a started container's
// labels, reading it back first.
func (r *Runtime) shapeStarted(ctx context.Context, containerID string, bw runtime.Bandwidth) error {
	if bw.IsZero() {
		return nil
	}
	res, err := r.client.ContainerInspect(ctx, containerID, client.ContainerInspectOptions{})
	if err != nil {
		return convertErr(err)
	}
	return r.shape(res.Container, bw)
}

// SweepLeftovers implements runtime.LeftoverSweeper: at the agent's start
// it checks the bandwidth limits of every running rental against its
// labels, applies again what a restarted dockerd (a new veth) or an
// operator's tc removed, and deletes the ifb devices of rentals that are
// gone.
func (r *Runtime) SweepLeftovers(ctx context.Context, live []runtime.Instance) error {
	keep := map[string]bool{}
	var errs []error
	for _, inst := range live {
		bw, err := runtime.BandwidthFromLabels(inst.AgentLabels)
		if err != nil {
			errs = append(errs, fmt.Errorf("instance %s: %w", inst.ID, err))
			continue
		}
		if bw.IsZero() {
			continue
		}
		keep[rentalnet.IFBName(inst.ID)] = true
		if inst.Status != runtime.StatusRunning || inst.Pid == 0 || r.opts.Network == nil {
			continue
		}
		host, err := rentalnet.HostVeth(fmt.Sprintf("/proc/%d/ns/net", inst.Pid), "eth0")
		if err != nil {
			errs = append(errs, fmt.Errorf("instance %s: %w", inst.ID, err))
			continue
		}
		want := rentalnet.Bandwidth{EgressMbps: bw.EgressMbps, IngressMbps: bw.IngressMbps}
		got, err := rentalnet.Shaped(host, rentalnet.IFBName(inst.ID))
		if err == nil && got == want {
			continue
		}
		r.log.Warn("bandwidth limits of a rental differ from its labels; applying them again",
			"instance_id", inst.ID, "found", fmt.Sprintf("%+v", got), "want", bw.String(), "error", err)
		if err := rentalnet.Shape(host, rentalnet.IFBName(inst.ID), r.ifbOwner()+inst.ID, want); err != nil {
			errs = append(errs, fmt.Errorf("instance %s: %w", inst.ID, err))
		}
	}
	errs = append(errs, rentalnet.SweepIFBs(r.ifbOwner(), keep))
	return errors.Join(errs...)
}

// ifbOwner starts the alias of the ifb devices of this back end's
// rentals, followed by the instance ID: the sweep removes only its own.
func (r *Runtime) ifbOwner() string {
	return "host-agent:" + r.opts.AgentID + "@" + r.opts.Host + "#" + r.opts.Scope + "/"
}

// removeIFB deletes the ifb device of instance id's limits, if it has one.
func (r *Runtime) removeIFB(id string) {
	if err := rentalnet.RemoveIFB(rentalnet.IFBName(id)); err != nil {
		r.log.Error("remove the ifb device of a rental's bandwidth limit", "instance_id", id, "error", err)
	}
}
