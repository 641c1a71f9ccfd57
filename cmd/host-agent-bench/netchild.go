package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/host-agent/host-agent/runtime/network"
)

// envNetSubnet, when set, gives the agent child the rentals' CNI network on
// this subnet, wired as cmd/host-agent wires it: network.New and Init, the
// back end's Network, and the rules' Run loop checking them in the
// background. Its bridge, chains and namespaces are named apart from a
// running agent's.
const envNetSubnet = "HOST_AGENT_BENCH_NET_SUBNET"

// benchNetName names the agent child's network (see envNetSubnet) as
// RENTAL_NETWORK_NAME names an agent's: its bridge (benchNetBridge), chains
// and namespaces come from network.Config.Named, as the daemon's do.
const benchNetName = "bench"

// benchNetBridge is the bridge of the agent child's network.
var benchNetBridge = network.Config{}.Named(benchNetName).Bridge

// childNetwork builds the agent child's network under work; close sweeps
// what rentals left and removes the chains and the bridge.
func childNetwork(ctx context.Context, work, subnet string, logger *slog.Logger) (*network.Network, func(), error) {
	prefix, err := netip.ParsePrefix(subnet)
	if err != nil {
		return nil, nil, fmt.Errorf("%s=%q: %w", envNetSubnet, subnet, err)
	}
	cfg := network.Config{
		Subnet:      prefix,
		IPAMDataDir: filepath.Join(work, "ipam"),
		StateDir:    filepath.Join(work, "network"),
		LockFile:    filepath.Join(work, "cni.lock"),
		// A resolver inside the subnet: the rules need one, nothing is
		// sent to it.
		DNS:    []netip.Addr{prefix.Addr().Next().Next()},
		Logger: logger,
	}.Named(benchNetName)
	n, err := network.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := n.Init(ctx); err != nil {
		return nil, nil, err
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Rules().Run(rctx, network.DefaultRecheckInterval) }()
	return n, func() {
		stop()
		<-done
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := n.Sweep(cctx, func(string) bool { return false }); err != nil {
			fmt.Fprintln(os.Stderr, "bench agent: network sweep:", err)
		}
		if err := n.RemoveRules(cctx); err != nil {
			fmt.Fprintln(os.Stderr, "bench agent: network rules:", err)
		}
		if l, err := netlink.LinkByName(benchNetBridge); err == nil {
			_ = netlink.LinkDel(l)
		}
	}, nil
}
