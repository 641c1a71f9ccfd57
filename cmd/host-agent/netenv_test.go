package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/network"
)

// testNetwork is the rentals' network of one test's agent: names and a
// subnet of its own (RENTAL_NETWORK_NAME, RENTAL_SUBNET), so that agents of
// tests running at once, or a real agent on the host, never share a bridge,
// chain or namespace. Everything it made is removed when the test ends.
type testNetwork struct {
	name    string
	subnet  netip.Prefix
	cfg     network.Config
	dataDir string
}

func newTestNetwork(t *testing.T, stateDir string) *testNetwork {
	t.Helper()
	testenv.LockHostNetwork(t)
	return anotherTestNetwork(t, stateDir)
}

// anotherTestNetwork is newTestNetwork for a test that holds the host's
// network already: a second agent's.
func anotherTestNetwork(t *testing.T, stateDir string) *testNetwork {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	tag := hex.EncodeToString(b)
	tn := &testNetwork{
		name:   tag,
		subnet: netip.MustParsePrefix(fmt.Sprintf("10.216.%d.0/24", b[0])),
	}
	tn.cfg = networkConfig(config{StateDir: stateDir, Network: netConfig{Name: tag, RentalSubnet: tn.subnet}})
	t.Cleanup(func() { tn.remove(t) })
	return tn
}

// env is what the agent is given; RENTAL_DNS names an address in a test
// range, which only a test that runs a resolver there ever sends to.
func (tn *testNetwork) env() []string {
	return []string{"RENTAL_NETWORK_NAME=" + tn.name, "RENTAL_SUBNET=" + tn.subnet.String(), "RENTAL_DNS=198.51.100.53"}
}

// remove tears down whatever the agent left: namespaces, leases, rules,
// the bridge.
func (tn *testNetwork) remove(t *testing.T) {
	cfg := tn.cfg
	cfg.DNS = []netip.Addr{netip.MustParseAddr("198.51.100.53")}
	cfg.StateDir = filepath.Clean(cfg.StateDir)
	n, err := network.New(cfg)
	if err != nil {
		// The subnet is routed: the agent's bridge is still up. Remove it
		// first, then the rest.
		if l, lerr := netlink.LinkByName(cfg.Bridge); lerr == nil {
			_ = netlink.LinkDel(l)
		}
		if n, err = network.New(cfg); err != nil {
			t.Errorf("clean up the test's network: %v", err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := n.Sweep(ctx, func(string) bool { return false }); err != nil {
		t.Errorf("clean up the test's network: %v", err)
	}
	if err := n.RemoveRules(ctx); err != nil {
		t.Errorf("clean up the test's rules: %v", err)
	}
	if l, err := netlink.LinkByName(cfg.Bridge); err == nil {
		_ = netlink.LinkDel(l)
	}
	// host-local's directory of the test's network, empty once swept.
	_ = os.RemoveAll(filepath.Join(network.DefaultIPAMDataDir, cfg.NetworkName))
}
