package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	gocni "github.com/containerd/go-cni"
	"github.com/vishvananda/netlink"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// Setup gives instance id a pinned network namespace on the rentals' bridge
// with ports published, and writes its resolv.conf, hosts and hostname
// files, with its traffic limited as WithBandwidth says. The ports must have been reserved (hostport.Allocator) and recorded
// by the caller. Calling Setup again for the same ID starts over: whatever
// an earlier ADD left (a crash, a retry) is deleted first, with the ports
// that ADD was given. A failed Setup leaves nothing behind.
func (n *Network) Setup(ctx context.Context, id string, ports []hostport.Mapping, hostname string, opts ...SetupOption) (_ Attachment, err error) {
	if err := checkID(id); err != nil {
		return Attachment{}, err
	}
	var o setupOptions
	for _, opt := range opts {
		opt(&o)
	}
	if hostname == "" {
		hostname = Hostname(id)
	}
	unlock, err := n.lock(ctx)
	if err != nil {
		return Attachment{}, err
	}
	defer unlock()
	if err := n.ensureBridge(); err != nil {
		return Attachment{}, err
	}
	if err := n.ensureRules(ctx); err != nil {
		return Attachment{}, err
	}
	path := n.NetNSPath(id)

	// DEL before ADD, with what the earlier ADD was given.
	if prev, ok, err := n.readJournal(id); err != nil {
		return Attachment{}, err
	} else if ok {
		if err := n.teardownLocked(ctx, id, prev.Ports); err != nil {
			return Attachment{}, fmt.Errorf("clean up an earlier setup: %w", err)
		}
	}
	if err := n.writeJournal(journalEntry{ID: id, NetNS: path, Ports: ports}); err != nil {
		return Attachment{}, fmt.Errorf("record attachment: %w", err)
	}
	// From here on a failure tears down what was done, as a crash would be
	// by Sweep.
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			if terr := n.teardownLocked(cctx, id, ports); terr != nil {
				n.cfg.Logger.Error("cleaning up a failed network setup", "instance_id", id, "error", terr)
			}
		}
	}()
	if err := removeNetNS(path); err != nil { // an empty mount point left by a crash
		return Attachment{}, err
	}
	if err := createNetNS(path); err != nil {
		return Attachment{}, err
	}
	nsOpts := []gocni.NamespaceOpts{gocni.WithCapabilityPortMap(portMappings(ports))}
	if !o.bandwidth.IsZero() {
		nsOpts = append(nsOpts, gocni.WithCapabilityBandWidth(o.bandwidth.cniBandwidth()))
	}
	res, err := n.cni.SetupSerially(ctx, id, path, nsOpts...)
	if err != nil {
		return Attachment{}, fmt.Errorf("CNI ADD: %w", err)
	}
	a := Attachment{ID: id, NetNS: path, Ports: slices.Clone(ports), Hostname: hostname}
	if cfg, ok := res.Interfaces["eth0"]; ok {
		for _, ipc := range cfg.IPConfigs {
			if ip, ok := netip.AddrFromSlice(ipc.IP); ok && ip.Unmap().Is4() {
				a.IP = ip.Unmap()
				if gw, ok := netip.AddrFromSlice(ipc.Gateway); ok {
					a.Gateway = gw.Unmap()
				}
			}
		}
	}
	if !a.IP.IsValid() {
		return Attachment{}, errors.New("CNI ADD returned no IPv4 address")
	}
	// Port isolation stops traffic between tenants at layer 2, below any
	// iptables rule (the bridge plugin's portIsolation, from plugins 1.7,
	// does the same).
	for name, c := range res.Interfaces {
		if c.Sandbox != "" || name == n.cfg.Bridge || name == "lo" {
			continue
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			continue // not a host-side link
		}
		if _, ok := l.(*netlink.Veth); !ok {
			continue
		}
		if err := netlink.LinkSetIsolated(l, true); err != nil {
			return Attachment{}, fmt.Errorf("isolate bridge port %s: %w", name, err)
		}
	}
	if err := n.bridgeSysctls(); err != nil {
		return Attachment{}, err
	}
	if a.Files, err = n.writeFiles(id, hostname, a.IP); err != nil {
		return Attachment{}, fmt.Errorf("write resolv.conf and hosts: %w", err)
	}
	return a, nil
}

// Teardown removes instance id's network: CNI DEL with the ports its ADD was
// given (from the journal; ports when there is none), then its namespace,
// lease and files. It is idempotent, and safe after a crash at any point of
// Setup. When DEL fails the namespace is kept, so that DEL can be run again
// (by a later Teardown or Sweep) while it still exists.
func (n *Network) Teardown(ctx context.Context, id string, ports []hostport.Mapping) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock, err := n.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return n.teardownLocked(ctx, id, ports)
}

func (n *Network) teardownLocked(ctx context.Context, id string, ports []hostport.Mapping) error {
	if e, ok, err := n.readJournal(id); err != nil {
		return err
	} else if ok {
		ports = e.Ports
	}
	path := n.NetNSPath(id)
	nsPath := path
	if !isNetNS(path) {
		// Gone (a reboot, a crash before the mount): DEL without a
		// namespace still releases the lease and portmap's rules.
		nsPath = ""
	}
	if err := n.cni.Remove(ctx, id, nsPath, gocni.WithCapabilityPortMap(portMappings(ports))); err != nil {
		return fmt.Errorf("CNI DEL: %w", err)
	}
	if err := removeNetNS(path); err != nil {
		return err
	}
	var errs []error
	errs = append(errs, n.removeLeases(map[string]bool{id: true}))
	errs = append(errs, n.removePortmapRules(ctx, map[string]bool{id: true}))
	errs = append(errs, removeSpoofcheck(ctx, map[string]bool{id: true}))
	errs = append(errs, n.removeFiles(id))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return n.removeJournal(id)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
