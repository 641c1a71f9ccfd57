package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/network"
)

// testNetwork is a rentals' network of the test's own: bridge, chains,
// namespace prefix, IPAM directory and subnet, removed when it ends.
type testNetwork struct {
	net *network.Network
	cfg network.Config
}

func newInvariantNetwork(t *testing.T) *testNetwork {
	t.Helper()
	needPlugins(t)
	testenv.LockHostNetwork(t)
	return newTestNetwork(t, nil)
}

// needPlugins skips (fails under HOST_AGENT_INTEGRATION=require) without
// root or the CNI plugins.
func needPlugins(t *testing.T) {
	t.Helper()
	testenv.Require(t)
	if err := network.FindPlugins(network.DefaultPluginDirs); err != nil {
		testenv.Unavailable(t, err.Error())
	}
}

// newTestNetwork makes the test's network, blocking blocked (nil: the
// defaults); the caller holds testenv.LockHostNetwork.
func newTestNetwork(t *testing.T, blocked []netip.Prefix, dns ...netip.Addr) *testNetwork {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	tag := hex.EncodeToString(b)
	state := t.TempDir()
	cfg := network.Config{
		Subnet:        netip.MustParsePrefix(fmt.Sprintf("10.218.%d.0/24", b[0])),
		NetworkName:   "hactd-" + tag,
		Bridge:        "hac" + tag,
		ChainPrefix:   "HAC" + strings.ToUpper(tag),
		NetNSPrefix:   "hactd-" + tag + "-",
		IPAMDataDir:   filepath.Join(state, "ipam"),
		StateDir:      filepath.Join(state, "network"),
		BlockedEgress: blocked,
		// Unless given, one never sent to.
		DNS: dns,
	}
	if len(dns) == 0 {
		cfg.DNS = []netip.Addr{netip.MustParseAddr("198.51.100.53")}
	}
	n, err := network.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
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
	})
	if err := n.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &testNetwork{net: n, cfg: cfg}
}

// checkNoOrphans fails on a network namespace, an IPAM lease or generated
// files of the test's network that belong to no existing container.
func (tn *testNetwork) checkNoOrphans(exists map[string]bool) error {
	ents, _ := os.ReadDir(network.DefaultNetNSDir)
	for _, e := range ents {
		if id, ok := strings.CutPrefix(e.Name(), tn.cfg.NetNSPrefix); ok && !exists[id] {
			return fmt.Errorf("network namespace %s without a container", e.Name())
		}
	}
	dir := filepath.Join(tn.cfg.IPAMDataDir, tn.cfg.NetworkName)
	leases, _ := os.ReadDir(dir)
	for _, e := range leases {
		if _, err := netip.ParseAddr(e.Name()); err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if id, _, _ := strings.Cut(string(b), "\n"); !exists[strings.TrimSpace(id)] {
			return fmt.Errorf("IPAM lease %s held for %q without a container", e.Name(), strings.TrimSpace(id))
		}
	}
	files, _ := os.ReadDir(filepath.Join(tn.cfg.StateDir, "files"))
	for _, e := range files {
		if !exists[e.Name()] {
			return fmt.Errorf("generated files of %s without a container", e.Name())
		}
	}
	return nil
}
