package network

import (
	"os/exec"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/host-agent/host-agent/internal/testenv"
)

// Shape puts the limits on a veth's host end and its ifb device, Shaped
// reads them back, Shape again with other limits replaces them, zero
// removes them with the ifb device, and SweepIFBs removes an ifb device
// of no instance of its owner, and only those.
func TestShapeAppliesReadsBackAndRemoves(t *testing.T) {
	testenv.Require(t, "tc")
	testenv.LockHostNetwork(t)
	tag := randHex(3)
	hostName, peerName := "hash"+tag, "hasp"+tag
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostName).Run() })
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: peerName}); err != nil {
		t.Fatal(err)
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		t.Fatal(err)
	}
	ifb := IFBName("shape-" + tag)
	t.Cleanup(func() { _ = RemoveIFB(ifb) })

	for _, want := range []Bandwidth{{EgressMbps: 50, IngressMbps: 100}, {EgressMbps: 20}, {IngressMbps: 7}} {
		if err := Shape(host, ifb, "test-owner/x", want); err != nil {
			t.Fatalf("Shape(%+v): %v", want, err)
		}
		if got, err := Shaped(host, ifb); err != nil || got != want {
			t.Fatalf("after Shape(%+v), Shaped = %+v, %v", want, got, err)
		}
		out, _ := exec.Command("tc", "qdisc", "show", "dev", hostName).CombinedOutput()
		t.Logf("%+v: %s", want, out)
	}
	if _, err := netlink.LinkByName(ifb); err == nil {
		t.Errorf("ifb %s kept without an egress limit", ifb)
	}
	if err := Shape(host, ifb, "test-owner/x", Bandwidth{EgressMbps: 5}); err != nil {
		t.Fatal(err)
	}
	if err := SweepIFBs("test-owner/", map[string]bool{ifb: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(ifb); err != nil {
		t.Errorf("SweepIFBs removed a kept ifb: %v", err)
	}
	if err := SweepIFBs("another-owner/", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(ifb); err != nil {
		t.Errorf("SweepIFBs removed another owner's ifb: %v", err)
	}
	if err := SweepIFBs("test-owner/", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(ifb); err == nil {
		t.Errorf("SweepIFBs left %s", ifb)
	}
	if err := Shape(host, ifb, "test-owner/x", Bandwidth{}); err != nil {
		t.Fatal(err)
	}
	if got, err := Shaped(host, ifb); err != nil || !got.IsZero() {
		t.Errorf("after Shape(zero), Shaped = %+v, %v", got, err)
	}
}

func TestIFBName(t *testing.T) {
	t.Parallel()
	a, b := IFBName("rental-a"), IFBName("rental-b")
	if len(a) != 15 || a == b || a[:len(IFBPrefix)] != IFBPrefix || IFBName("rental-a") != a {
		t.Errorf("IFBName: %q, %q", a, b)
	}
}
