package docker

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/conformance"
	rentalnet "github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/testenv"
)

// A rental's bandwidth limits are tc rules on the host's end of its veth;
// when they are gone (an operator's tc, a dockerd that made a new veth),
// the agent's restore applies them again from the labels, and a terminate
// removes the ifb device.
func TestBandwidthReappliedOnRestore(t *testing.T) {
	d := needDockerd(t, debian)
	testenv.LockHostNetwork(t)
	be, _ := newScope(t, d).OpenNetworked(t, conformance.NewRecorder(), rentalnet.DefaultBlockedEgress, netip.MustParseAddr("198.51.100.77"))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	l := runtime.NewLifecycle(be, runtime.LifecycleOptions{Logger: quiet})
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
	if err := rentalnet.Shape(host, rentalnet.IFBName(id), rentalnet.Bandwidth{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := rentalnet.Shaped(host, rentalnet.IFBName(id)); !got.IsZero() {
		t.Fatalf("limits not removed: %+v", got)
	}
	// The agent's restart: a new Lifecycle restores from the runtime.
	if err := runtime.NewLifecycle(be, runtime.LifecycleOptions{Logger: quiet}).Restore(conformance.Ctx(t)); err != nil {
		t.Fatal(err)
	}
	if got, err := rentalnet.Shaped(host, rentalnet.IFBName(id)); err != nil || got != want {
		t.Fatalf("after the restore: limits %+v (%v), want %+v", got, err, want)
	}
	if err := l.Terminate(conformance.Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(rentalnet.IFBName(id)); err == nil {
		t.Errorf("ifb %s left after the terminate", rentalnet.IFBName(id))
	}
}
