package docker

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	rentalnet "github.com/host-agent/host-agent/runtime/network"
)

// A rental's bandwidth limits are tc rules on the host's end of its veth;
// when they are gone (an operator's tc, a dockerd that made a new veth),
// the agent's restore applies them again from the labels and removes the
// ifb devices of its rentals that are gone, and a terminate removes the
// rental's.
func TestBandwidthReappliedOnRestore(t *testing.T) {
	d := needDockerd(t, debian)
	testenv.LockHostNetwork(t)
	be, _ := newScope(t, d).OpenNetworked(t, conformance.NewRecorder(), rentalnet.DefaultBlockedEgress, netip.MustParseAddr("198.51.100.77"))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	l := lifecycle.New(be, lifecycle.Options{Logger: quiet})
	id := fmt.Sprintf("bw-restore-%d", time.Now().UnixNano())
	spec := runtime.InstanceSpec{ID: id, Image: payloadRef, Command: []string{"sleep", "inf"},
		Resources: runtime.Resources{EgressMbps: 30, IngressMbps: 40}}
	inst, err := l.Start(conformance.Ctx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Terminate(conformance.Ctx(t), id, time.Second) })
	host, err := rentalnet.HostVeth(fmt.Sprintf("/proc/%d/ns/net", inst.Pid), "eth0")
	if err != nil {
		t.Fatal(err)
	}
	want := rentalnet.Bandwidth{EgressMbps: 30, IngressMbps: 40}
	if got, err := rentalnet.Shaped(host, rentalnet.IFBName(id)); err != nil || got != want {
		t.Fatalf("after the start: limits %+v (%v), want %+v", got, err, want)
	}
	if err := rentalnet.Shape(host, rentalnet.IFBName(id), "", rentalnet.Bandwidth{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := rentalnet.Shaped(host, rentalnet.IFBName(id)); !got.IsZero() {
		t.Fatalf("limits not removed: %+v", got)
	}
	// An ifb device of a rental of this back end that is gone (the agent
	// died between removing the container and the device), and one of
	// another agent's.
	ghost, other := rentalnet.IFBName(id+"-gone"), rentalnet.IFBName(id+"-other")
	for name, alias := range map[string]string{ghost: be.(*Runtime).ifbOwner() + id + "-gone", other: "host-agent:another@unix:///x#/" + id} {
		if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rentalnet.RemoveIFB(name) })
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetAlias(l, alias); err != nil {
			t.Fatal(err)
		}
	}
	// The agent's restart: a new Lifecycle restores from the runtime.
	if err := lifecycle.New(be, lifecycle.Options{Logger: quiet}).Restore(conformance.Ctx(t)); err != nil {
		t.Fatal(err)
	}
	if got, err := rentalnet.Shaped(host, rentalnet.IFBName(id)); err != nil || got != want {
		t.Fatalf("after the restore: limits %+v (%v), want %+v", got, err, want)
	}
	if _, err := netlink.LinkByName(ghost); err == nil {
		t.Errorf("the restore left the ifb device of a rental that is gone")
	}
	if _, err := netlink.LinkByName(other); err != nil {
		t.Errorf("the restore removed another agent's ifb device: %v", err)
	}
	if err := l.Terminate(conformance.Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(rentalnet.IFBName(id)); err == nil {
		t.Errorf("ifb %s left after the terminate", rentalnet.IFBName(id))
	}
}
