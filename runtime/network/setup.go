package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"

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
func (n *Network) Setup(ctx context.Context, id string, ports []hostport.Mapping, hostname string, opts ...SetupOption) (Attachment, error) {
	return n.SetupPinned(ctx, id, ports, hostname, nil, opts...)
}

// SetupPinned is Setup, calling pinned (when not nil) as soon as the
// namespace the instance joins is pinned at the attachment's NetNS, fresh
// and for good: whatever an earlier ADD left is gone, and ADD and the rest
// of the setup run in it from then on. A task may be created in it then,
// beside ADD, and must not start before SetupPinned has returned without
// an error. pinned is not called when the setup fails before.
func (n *Network) SetupPinned(ctx context.Context, id string, ports []hostport.Mapping, hostname string, pinned func(), opts ...SetupOption) (Attachment, error) {
	return n.setup(ctx, id, ports, hostname, pinned, false, opts...)
}

// SetupAgain is Setup for an instance whose task was created in its pinned
// namespace beside a Setup that was cut short (the agent stopped during
// ADD): whatever that ADD left is deleted (DEL in the namespace, and what
// DEL leaves), and ADD runs again in the same namespace, which the task
// keeps, as do the generated files it has mounted. A failure keeps the
// namespace and the files too, for the next try or Teardown. Where no
// namespace is pinned it is Setup.
func (n *Network) SetupAgain(ctx context.Context, id string, ports []hostport.Mapping, hostname string, opts ...SetupOption) (Attachment, error) {
	return n.setup(ctx, id, ports, hostname, nil, isNetNS(n.NetNSPath(id)), opts...)
}

func (n *Network) setup(ctx context.Context, id string, ports []hostport.Mapping, hostname string, pinned func(), keepNS bool, opts ...SetupOption) (_ Attachment, err error) {
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
	// The rules are compared while the namespace is made and ADD runs
	// (reading iptables races with no plugin); where they differ they are
	// written after ADD, before Setup returns and so before the rental's
	// task exists: nothing of the rental's is sent before they are right.
	rules := make(chan bool, 1)
	go func() { rules <- n.rulesUnchanged(ctx) }()
	rulesChecked := false
	defer func() {
		if !rulesChecked {
			<-rules
		}
	}()
	path := n.NetNSPath(id)

	// DEL before ADD, with what the earlier ADD was given.
	if prev, ok, err := n.readJournal(id); err != nil {
		return Attachment{}, err
	} else if ok {
		if err := n.detachLocked(ctx, id, prev.Ports, keepNS); err != nil {
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
			if terr := n.detachLocked(cctx, id, ports, keepNS); terr != nil {
				n.cfg.Logger.Error("cleaning up a failed network setup", "instance_id", id, "error", terr)
			}
		}
	}()
	if !keepNS {
		if err := removeNetNS(path); err != nil { // an empty mount point left by a crash
			return Attachment{}, err
		}
		if err := createNetNS(path); err != nil {
			return Attachment{}, err
		}
	}
	if pinned != nil {
		pinned()
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
	rulesChecked = true
	if !<-rules {
		if err := n.ensureRules(ctx); err != nil {
			return Attachment{}, err
		}
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
	return n.detachLocked(ctx, id, ports, false)
}

// detachLocked is teardownLocked; with keepNS the namespace and the
// generated files stay (a task is in the one and has the others mounted).
func (n *Network) detachLocked(ctx context.Context, id string, ports []hostport.Mapping, keepNS bool) error {
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
	if !keepNS {
		if err := removeNetNS(path); err != nil {
			return err
		}
	}
	// What DEL may have left, looked for at once: the lease files, portmap's
	// rules in iptables and the spoof check in nft's bridge table are apart.
	ids := map[string]bool{id: true}
	errs := make([]error, 4)
	var wg sync.WaitGroup
	wg.Go(func() { errs[0] = n.removePortmapRules(ctx, ids) })
	wg.Go(func() { errs[1] = removeSpoofcheck(ctx, ids) })
	errs[2] = n.removeLeases(ids)
	if !keepNS {
		errs[3] = n.removeFiles(id)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return n.removeJournal(id)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
