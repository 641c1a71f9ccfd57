package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerdclient "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	gocni "github.com/containerd/go-cni"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	ctrd "github.com/host-agent/host-agent/runtime/containerd"
)

// The networked phase compares start and terminate with a network on every
// side: the agent with its rentals' CNI network (childNetwork), `ctr run
// --cni -d` with a bridge conflist of the usual plugins (bridge, portmap,
// firewall, tuning, as nerdctl's default network has them), and the
// containerd client with go-cni, the same conflist and a loopback network.
// Each side has a bridge and a subnet of its own, none routed on a host
// that the bench runs on (checked before the phase).
const (
	sideAgentNet  = "agent-net"
	sideCtrCNI    = "ctr-cni"
	sideClientCNI = "client-cni"

	netSubnetAgent  = "10.231.1.0/24"
	netSubnetCtr    = "10.231.2.0/24"
	netSubnetClient = "10.231.3.0/24"
	ctrCNIBridge    = "habctr0"
	clientCNIBridge = "habcli0"
	pluginDir       = "/usr/lib/cni"
)

// Networked is the networked phase's result.
type Networked struct {
	Start     map[string]Stat    `json:"start"`
	Terminate map[string]Stat    `json:"terminate"`
	Ratios    map[string]float64 `json:"ratios"`
	// Ports are the bridge ports each side's warm-up rental had once
	// started: one when the side gave it a network.
	Ports map[string]int `json:"bridge_ports_after_warmup_start"`
}

// conflist is the CNI network list of the ctr and client sides: bridge
// (gateway, no masquerade: the agent's is one static rule, not a chain per
// container), portmap, firewall and tuning, leases under dataDir.
func conflist(name, bridge, subnet, dataDir string) []byte {
	b, _ := json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       name,
		"plugins": []any{
			map[string]any{"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
				"ipam": map[string]any{"type": "host-local", "ranges": [][]map[string]string{{{"subnet": subnet}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}}, "dataDir": dataDir}},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
			map[string]any{"type": "firewall"},
			map[string]any{"type": "tuning"},
		},
	})
	return b
}

// checkUnrouted refuses a subnet that a route of the host other than the
// default one covers: the bench's bridges would take it over.
func checkUnrouted(subnets ...string) error {
	for _, s := range subnets {
		out, err := exec.Command("ip", "-o", "route", "show", "match", s).Output()
		if err != nil {
			return fmt.Errorf("ip route show match %s: %w", s, err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line == "" || strings.HasPrefix(line, "default") {
				continue
			}
			return fmt.Errorf("subnet %s is routed on this host (%s): the networked phase needs it free", s, line)
		}
	}
	return nil
}

// networked runs the networked phase: runs interleaved start/terminate
// rounds of each side, after one warm-up each.
func networked(ctx context.Context, cfg config, address, image, work string, direct *directSide) (*Networked, error) {
	if err := checkUnrouted(netSubnetAgent, netSubnetCtr, netSubnetClient); err != nil {
		return nil, err
	}
	for _, br := range []string{benchNetBridge, ctrCNIBridge, clientCNIBridge} {
		if _, err := netlink.LinkByName(br); err == nil {
			return nil, fmt.Errorf("bridge %s exists: another bench is running, or one was killed (ip link del %s)", br, br)
		}
	}
	defer func() {
		for _, br := range []string{ctrCNIBridge, clientCNIBridge} {
			if l, err := netlink.LinkByName(br); err == nil {
				_ = netlink.LinkDel(l)
			}
		}
	}()
	os.Setenv(envNetSubnet, netSubnetAgent)
	agent, err := startAgent(ctx, address, filepath.Join(work, "net-agent"), 1, "", cfg.ProfileDir)
	os.Unsetenv(envNetSubnet)
	if err != nil {
		return nil, err
	}
	defer agent.close()
	ctr, err := newCtrCNI(address, image, filepath.Join(work, "ctr-cni"))
	if err != nil {
		return nil, err
	}
	defer ctr.close()
	client, err := newClientCNI(direct, filepath.Join(work, "client-cni"))
	if err != nil {
		return nil, err
	}
	sides := map[string]side{sideAgentNet: agentSide{agent: agent, image: image}, sideCtrCNI: ctr, sideClientCNI: client}
	order := []string{sideAgentNet, sideCtrCNI, sideClientCNI}
	bridges := map[string]string{sideAgentNet: benchNetBridge, sideCtrCNI: ctrCNIBridge, sideClientCNI: clientCNIBridge}
	res := &Networked{Start: map[string]Stat{}, Terminate: map[string]Stat{}, Ratios: map[string]float64{}, Ports: map[string]int{}}
	for _, name := range order {
		if err := sides[name].start(ctx, "warmnet-"+name); err != nil {
			return nil, fmt.Errorf("%s warm-up start: %w", name, err)
		}
		if res.Ports[name], err = bridgePorts(bridges[name]); err != nil {
			return nil, err
		}
		if err := sides[name].terminate(ctx, "warmnet-"+name); err != nil {
			return nil, fmt.Errorf("%s warm-up terminate: %w", name, err)
		}
	}
	starts, terms := map[string][]time.Duration{}, map[string][]time.Duration{}
	err = agent.withProfile("start-terminate-net", func() error {
		return interleaved(ctx, sides, order, cfg.NetRuns, "n", starts, terms)
	})
	if err != nil {
		return nil, err
	}
	for _, name := range order {
		res.Start[name] = summarize(starts[name])
		res.Terminate[name] = summarize(terms[name])
	}
	for _, other := range []string{sideCtrCNI, sideClientCNI} {
		res.Ratios["start_agent_over_"+other] = res.Start[sideAgentNet].Median / res.Start[other].Median
		res.Ratios["terminate_agent_over_"+other] = res.Terminate[sideAgentNet].Median / res.Terminate[other].Median
	}
	return res, nil
}

// ctrCNI runs `ctr run --cni -d` and ctr's kill (which runs CNI DEL for a
// container started with --cni) and removals. ctr reads its CNI
// configuration from /etc/cni/net.d and its plugins from /opt/cni/bin, with
// no flag to change either: its commands are started from a thread with a
// mount namespace of its own, where the bench's conflist is bind-mounted on
// /etc/cni/net.d and the plugins on /opt/cni/bin, the host's left alone.
type ctrCNI struct {
	ctrSide
	exec chan func()
}

func newCtrCNI(address, image, dir string) (*ctrCNI, error) {
	conf := filepath.Join(dir, "net.d")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(conf, "10-bench.conflist"),
		conflist("bench-ctr", ctrCNIBridge, netSubnetCtr, filepath.Join(dir, "ipam")), 0o644); err != nil {
		return nil, err
	}
	c := &ctrCNI{ctrSide: ctrSide{address: address, image: image}, exec: make(chan func())}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, with its mount namespace, dies
		// with the goroutine instead of returning to Go's pool.
		goruntime.LockOSThread()
		if err := privateCNIMounts(conf); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for f := range c.exec {
			f()
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return c, nil
}

// privateCNIMounts gives the calling thread a mount namespace where conf is
// /etc/cni/net.d and the plugins are in /opt/cni/bin.
func privateCNIMounts(conf string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	// A tmpfs over /etc/cni and /opt in this namespace only: the
	// directories ctr reads, whatever the host has there.
	for _, d := range []string{"/etc/cni", "/opt"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size=1m,mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs on %s: %w", d, err)
		}
	}
	for src, dst := range map[string]string{conf: "/etc/cni/net.d", pluginDir: "/opt/cni/bin"} {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", src, dst, err)
		}
	}
	return nil
}

func (c *ctrCNI) close() { close(c.exec) }

// ctr starts ctr from the thread with the private mounts and waits for it.
func (c *ctrCNI) ctr(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", c.address, "-n", "bench-ctr"}, args...)...)
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	started := make(chan error, 1)
	c.exec <- func() { started <- cmd.Start() }
	if err := <-started; err != nil {
		return err
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("ctr %v: %w: %s", args, err, out.b)
	}
	return nil
}

func (c *ctrCNI) start(ctx context.Context, id string) error {
	return c.ctr(ctx, "run", "--cni", "-d", c.image, id, "/payload", "sleep", "inf")
}

func (c *ctrCNI) terminate(ctx context.Context, id string) error {
	if err := c.ctr(ctx, "task", "kill", "-s", "SIGKILL", id); err != nil {
		return err
	}
	if err := c.ctr(ctx, "task", "rm", "-f", id); err != nil {
		return err
	}
	return c.ctr(ctx, "containers", "rm", id)
}

type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if len(l.b) < 64<<10 {
		l.b = append(l.b, p...)
	}
	return len(p), nil
}

var _ io.Writer = (*limitedBuffer)(nil)

// clientCNI is the containerd client with the agent's confinement (as
// directSide) and go-cni: the conflist and a loopback network, ADD into
// the task's namespace before it starts, DEL while it still exists.
type clientCNI struct {
	d   *directSide
	cni gocni.CNI
}

func newClientCNI(d *directSide, dir string) (*clientCNI, error) {
	n, err := gocni.New(gocni.WithPluginDir([]string{pluginDir}), gocni.WithInterfacePrefix("eth"),
		gocni.WithConfListBytes(conflist("bench-client", clientCNIBridge, netSubnetClient, filepath.Join(dir, "ipam"))),
		gocni.WithLoNetwork)
	if err != nil {
		return nil, err
	}
	return &clientCNI{d: d, cni: n}, nil
}

func (c *clientCNI) start(ctx context.Context, id string) error {
	ctx = namespaces.WithNamespace(ctx, "bench-client")
	d := c.d
	ctn, err := d.cl.NewContainer(ctx, id,
		containerdclient.WithNewSnapshot(id, d.img),
		containerdclient.WithRuntime(ctrd.RuncRuntime, &options.Options{}),
		containerdclient.WithNewSpec(oci.WithImageConfigArgs(d.img, []string{"sleep", "inf"}),
			oci.WithNoNewPrivileges, seccomp.WithDefaultProfile()))
	if err != nil {
		return err
	}
	task, err := ctn.NewTask(ctx, cio.LogFile(filepath.Join(d.logDir, id+".log")))
	if err != nil {
		return err
	}
	exitC, err := task.Wait(namespaces.WithNamespace(context.Background(), "bench-client"))
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.exits[id] = exitC
	d.mu.Unlock()
	if _, err := c.cni.Setup(ctx, id, fmt.Sprintf("/proc/%d/ns/net", task.Pid())); err != nil {
		return fmt.Errorf("CNI ADD: %w", err)
	}
	return task.Start(ctx)
}

func (c *clientCNI) terminate(ctx context.Context, id string) error {
	cctx := namespaces.WithNamespace(ctx, "bench-client")
	ctn, err := c.d.cl.LoadContainer(cctx, id)
	if err != nil {
		return err
	}
	task, err := ctn.Task(cctx, nil)
	if err != nil {
		return err
	}
	if err := c.cni.Remove(cctx, id, fmt.Sprintf("/proc/%d/ns/net", task.Pid())); err != nil {
		return fmt.Errorf("CNI DEL: %w", err)
	}
	if err := task.Kill(cctx, syscall.SIGKILL); err != nil {
		return err
	}
	c.d.mu.Lock()
	exitC := c.d.exits[id]
	delete(c.d.exits, id)
	c.d.mu.Unlock()
	<-exitC
	if _, err := task.Delete(cctx); err != nil {
		return err
	}
	return ctn.Delete(cctx, containerdclient.WithSnapshotCleanup)
}

func (n *Networked) print(w io.Writer) {
	if n == nil {
		return
	}
	fmt.Fprintf(w, "\nwith a network on every side\n%-28s %6s %10s %10s\n", "measure", "n", "median ms", "p95 ms")
	for _, op := range []string{"start", "terminate"} {
		m := map[string]map[string]Stat{"start": n.Start, "terminate": n.Terminate}[op]
		for _, name := range []string{sideAgentNet, sideCtrCNI, sideClientCNI} {
			s := m[name]
			fmt.Fprintf(w, "%-28s %6d %10.1f %10.1f\n", op+" "+name, s.N, s.Median, s.P95)
		}
	}
	for _, k := range []string{"start_agent_over_" + sideCtrCNI, "start_agent_over_" + sideClientCNI,
		"terminate_agent_over_" + sideCtrCNI, "terminate_agent_over_" + sideClientCNI} {
		fmt.Fprintf(w, "%-40s %6.2f\n", k, n.Ratios[k])
	}
}

// bridgePorts counts the links enslaved to bridge.
func bridgePorts(bridge string) (int, error) {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return 0, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			n++
		}
	}
	return n, nil
}
