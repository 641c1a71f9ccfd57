package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	mnetwork "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/network/dockernet"
)

// agentRules are the lines of iptables-save, in every table, that name the
// test's bridge or chains: what must be gone once the network is removed.
func agentRules(t *testing.T, bridge, prefix string) []string {
	t.Helper()
	out, err := exec.Command("iptables-save").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, bridge) || strings.Contains(l, prefix+"-") {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestPublishedPortsAndIsolation runs rentals on a dockerd that manages
// iptables, on the agent's bridge network: a user reaches a rental's
// published port on the host port the agent answered, and the rental sees
// that port in HOST_PORT_TCP_<n>; a rental reaches the internet but not
// another rental, the host, the LAN or the metadata address. Removing the
// network leaves no rule or container, and a later start builds it again.
func TestPublishedPortsAndIsolation(t *testing.T) {
	testenv.Require(t, integrationBinaries...)
	bin := testenv.DebianDockerd()
	if bin == "" {
		testenv.Unavailable(t, "Debian's dockerd is not installed")
	}
	needContainerd(t)
	needPayload(t)
	testenv.LockHostNetwork(t)
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	tag := hex.EncodeToString(b)
	// A subnet, bridge and chains of the test's own, apart from the
	// agent's defaults and from other tests'.
	subnet := netip.MustParsePrefix(fmt.Sprintf("10.219.%d.0/24", b[0]))
	if err := network.CheckSubnet(subnet); err != nil {
		t.Fatal(err)
	}
	opts := NetworkOptions{Name: "hadn-" + tag, PublicIP: "203.0.113.77", Config: dockernet.Config{
		Bridge: "hadn" + tag, Subnet: subnet, ChainPrefix: "HADN" + strings.ToUpper(tag),
		BlockedEgress: network.DefaultBlockedEgress,
	}}

	user := testenv.AddPeer(t, "user", "198.51.100.1", "198.51.100.2", 30)
	inet := testenv.AddPeer(t, "inet", "203.0.113.1", "203.0.113.2", 30)
	lan := testenv.AddPeer(t, "lan", "10.77.7.1", "10.77.7.2", 30)
	meta := testenv.AddPeer(t, "meta", "192.168.213.1", "192.168.213.2", 30, "169.254.169.254")
	opts.HostAddrs = []netip.Addr{user.Host}
	metaAddr := netip.MustParseAddr("169.254.169.254")
	testenv.MustRouteInto(t, user.Addr, user.HostIf)
	testenv.MustRouteInto(t, user.Host, user.HostIf)
	testenv.MustRouteInto(t, inet.Addr, inet.HostIf)
	testenv.MustRouteInto(t, lan.Addr, lan.HostIf)
	testenv.MustRouteInto(t, meta.Addr, meta.HostIf)
	testenv.MustRouteInto(t, metaAddr, meta.HostIf)

	if !testenv.DockerChainsPresent() {
		// The private dockerd makes Docker's chains; none was here, so
		// none stays behind.
		t.Cleanup(func() { testenv.RemoveDockerChains(t) })
	}
	dir, err := os.MkdirTemp("", "ha-dn-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d, err := testenv.StartDockerd(dir, testenv.DockerdOptions{Bin: bin, Containerd: containerd.Address, IPTables: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeRulesNaming(opts.Bridge) })
	t.Cleanup(d.Close)

	be, err := New(Options{Host: d.Host, AgentID: "nettest", StateDir: t.TempDir(), Network: &opts,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	t.Cleanup(func() {
		// Whatever a failure left: the containers, then the network while
		// dockerd still runs, so that it removes its own rules.
		ctx := context.Background()
		if list, err := be.client.ContainerList(ctx, client.ContainerListOptions{All: true}); err == nil {
			for _, c := range list.Items {
				_, _ = be.client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
			}
		}
		if err := be.RemoveNetwork(ctx); err != nil {
			t.Error(err)
		}
	})
	rng, err := hostport.ParseRange("41200-41299")
	if err != nil {
		t.Fatal(err)
	}
	l := lifecycle.New(be, lifecycle.Options{
		Kinds:  []runtime.Admission{lifecycle.PortReservations{Alloc: hostport.NewAllocator(rng, nil)}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	start := func(id string) runtime.Instance {
		t.Helper()
		inst, err := l.Start(ctx, runtime.InstanceSpec{ID: id, Image: payloadRef,
			Command: []string{"serve", "8080", "sleep", "inf"},
			Ports:   []hostport.PortRequest{{ContainerPort: 8080, Protocol: hostport.TCP}}})
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		if len(inst.Ports) != 1 || inst.Ports[0].ContainerPort != 8080 || !rng.Contains(inst.Ports[0].HostPort) {
			t.Fatalf("%s answered ports %+v, want 8080/tcp on a host port in %s", id, inst.Ports, rng)
		}
		return inst
	}
	// userReaches asks the rental's published port from the user's
	// namespace, until the server inside has started listening.
	userReaches := func(inst runtime.Instance) {
		t.Helper()
		hp := int(inst.Ports[0].HostPort)
		want := fmt.Sprintf("HOST_PORT_TCP_8080=%d HOST_PORT_UDP_8080= from %s", hp, user.Addr)
		var got string
		var err error
		for range 20 {
			if got, err = testenv.Greeting(t, user.NS, "tcp", user.Host, hp); err == nil && got != "" {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if got != want {
			t.Fatalf("user -> %s:%d answered %q (%v), want %q", user.Host, hp, got, err, want)
		}
	}

	a := start("net-a-" + tag)
	bInst := start("net-b-" + tag)
	if a.Ports[0].HostPort == bInst.Ports[0].HostPort {
		t.Fatalf("both rentals got host port %d", a.Ports[0].HostPort)
	}
	userReaches(a)
	userReaches(bInst)
	got, err := be.Get(ctx, a.ID)
	if err != nil || len(got.Ports) != 1 || got.Ports[0] != a.Ports[0] {
		t.Fatalf("Get answered ports %+v (%v), want %+v", got.Ports, err, a.Ports)
	}

	res, err := be.client.ContainerInspect(ctx, bInst.ContainerID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ep := res.Container.NetworkSettings.Networks[opts.Name]
	if ep == nil {
		t.Fatalf("rental b is not on network %s: %+v", opts.Name, res.Container.NetworkSettings.Networks)
	}
	if v6, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + opts.Bridge + "/disable_ipv6"); err != nil || strings.TrimSpace(string(v6)) != "1" {
		t.Errorf("IPv6 on the rentals' bridge: disable_ipv6 %q (%v), want 1", v6, err)
	}
	bAddr := ep.IPAddress
	gw := ep.Gateway
	if !subnet.Contains(bAddr) || !subnet.Contains(gw) {
		t.Fatalf("rental b has address %s, gateway %s, outside %s", bAddr, gw, subnet)
	}

	inetPort := testenv.ServeIn(t, inet.NS, inet.Addr.String()+":0", "internet")
	lanPort := testenv.ServeIn(t, lan.NS, lan.Addr.String()+":0", "lan")
	metaPort := testenv.ServeIn(t, meta.NS, metaAddr.String()+":80", "metadata")
	lan2Port := testenv.ServeIn(t, meta.NS, meta.Addr.String()+":0", "lan")
	hostPort := testenv.ServeIn(t, "", user.Host.String()+":0", "host")
	gwPort := testenv.ServeIn(t, "", gw.String()+":0", "gateway")

	aNS := fmt.Sprintf("/proc/%d/ns/net", a.Pid)
	if line, err := testenv.Greeting(t, aNS, "tcp", inet.Addr, inetPort); err != nil || !strings.HasPrefix(line, "internet from ") {
		t.Fatalf("rental -> internet %s: %q, %v; want an answer", inet.Addr, line, err)
	}
	for _, c := range []struct {
		what string
		addr netip.Addr
		port int
	}{
		{"another rental", bAddr, 8080},
		{"the LAN", lan.Addr, lanPort},
		{"the metadata address", metaAddr, metaPort},
		{"the LAN", meta.Addr, lan2Port},
		{"the host", user.Host, hostPort},
		{"the host's bridge address", gw, gwPort},
	} {
		if line, err := testenv.Greeting(t, aNS, "tcp", c.addr, c.port); err == nil {
			t.Errorf("rental reached %s at %s:%d: %q", c.what, c.addr, c.port, line)
		}
	}
	// The refusals are the agent's rules: their counters moved. Between
	// rentals the bridge's port isolation drops the frames first, below
	// the rule between the bridge's ports, which stays as a second wall.
	if open, err := network.UnisolatedPorts(opts.Bridge); err != nil || len(open) > 0 {
		t.Errorf("ports of %s without isolation: %v (%v)", opts.Bridge, open, err)
	}
	for _, r := range []struct{ chain, match string }{
		{opts.ForwardChain(), "-d 10.0.0.0/8"},
		{opts.ForwardChain(), "-d 192.168.0.0/16"},
		{opts.ForwardChain(), "-d 169.254.0.0/16"},
		{opts.InputChain(), "-j REJECT"},
	} {
		if n := packets(t, r.chain, r.match); n == 0 {
			t.Errorf("rule %q of %s matched no packet", r.match, r.chain)
		}
	}

	for _, id := range []string{a.ID, bInst.ID} {
		if err := l.Terminate(ctx, id, 5*time.Second); err != nil {
			t.Fatalf("terminate %s: %v", id, err)
		}
	}
	if err := be.RemoveNetwork(ctx); err != nil {
		t.Fatal(err)
	}
	if left := agentRules(t, opts.Bridge, opts.ChainPrefix); len(left) > 0 {
		t.Fatalf("rules left after removing the network:\n%s", strings.Join(left, "\n"))
	}

	// Built again by the next start, which publishes as before.
	c := start("net-c-" + tag)
	userReaches(c)
	if err := l.Terminate(ctx, c.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := be.RemoveNetwork(ctx); err != nil {
		t.Fatal(err)
	}
	if left := agentRules(t, opts.Bridge, opts.ChainPrefix); len(left) > 0 {
		t.Fatalf("rules left after the second cycle:\n%s", strings.Join(left, "\n"))
	}
	list, err := be.client.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil || len(list.Items) != 0 {
		t.Fatalf("containers left: %d (%v)", len(list.Items), err)
	}
}

// packets is the packet count of the first rule of chain containing match
// (with the counters left out).
func packets(t *testing.T, chain, match string) int {
	t.Helper()
	out, err := exec.Command("iptables", "-w", "-S", chain, "-v").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables -S %s: %v: %s", chain, err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		n := -1
		var rest []string
		for i := 0; i < len(f); i++ {
			if f[i] == "-c" && i+2 < len(f) {
				fmt.Sscan(f[i+1], &n)
				i += 2
				continue
			}
			rest = append(rest, f[i])
		}
		if n >= 0 && strings.Contains(strings.Join(rest, " "), match) {
			return n
		}
	}
	t.Fatalf("no rule %q in %s:\n%s", match, chain, out)
	return 0
}

// removeRulesNaming deletes every rule of the filter and nat tables that
// names the bridge, and the bridge: what a dockerd stopped while the
// network still existed leaves behind.
func removeRulesNaming(bridge string) {
	for _, table := range []string{"filter", "nat"} {
		out, _ := exec.Command("iptables", "-w", "-t", table, "-S").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "-A ") && strings.Contains(l, bridge) {
				_ = exec.Command("iptables", append([]string{"-w", "-t", table, "-D"}, strings.Fields(l)[1:]...)...).Run()
			}
		}
	}
	_ = exec.Command("ip", "link", "del", bridge).Run()
}

// TestForeignNetworkRefused: a network of the agent's name that lets
// rentals reach each other (made by someone else) is never used: the start
// fails naming it and leaves no container; the network is left alone.
func TestForeignNetworkRefused(t *testing.T) {
	d := needDockerd(t, debian)
	testenv.LockHostNetwork(t)
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	tag := hex.EncodeToString(b)
	subnet := netip.MustParsePrefix(fmt.Sprintf("10.218.%d.0/24", b[0]))
	if err := network.CheckSubnet(subnet); err != nil {
		t.Fatal(err)
	}
	opts := NetworkOptions{Name: "hadf-" + tag, Config: dockernet.Config{Bridge: "hadf" + tag, Subnet: subnet, ChainPrefix: "HADF" + strings.ToUpper(tag)}}
	be := newScope(t, d).open(t, nil, nil)
	ctx := context.Background()
	v4 := true
	if _, err := be.client.NetworkCreate(ctx, opts.Name, client.NetworkCreateOptions{
		Driver: "bridge", EnableIPv4: &v4,
		IPAM:    &mnetwork.IPAM{Config: []mnetwork.IPAMConfig{{Subnet: subnet}}},
		Options: map[string]string{optBridgeName: opts.Bridge},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = be.client.NetworkRemove(context.Background(), opts.Name, client.NetworkRemoveOptions{})
		_ = exec.Command("ip", "link", "del", opts.Bridge).Run()
	})
	r, err := New(Options{Host: d.Host, AgentID: "nettest", StateDir: t.TempDir(), Network: &opts,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	_, err = r.Start(ctx, runtime.InstanceSpec{ID: "foreign-" + tag, Image: payloadRef, Command: []string{"sleep", "inf"}})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "inter-container traffic on") {
		t.Fatalf("start on a foreign network: %v, want a refusal naming inter-container traffic", err)
	}
	if _, err := r.inspectByName(ctx, "foreign-"+tag); !errdefs.IsNotFound(err) {
		t.Fatalf("container left after the refusal: %v", err)
	}
	if _, err := be.client.NetworkInspect(ctx, opts.Name, client.NetworkInspectOptions{}); err != nil {
		t.Fatalf("the foreign network was touched: %v", err)
	}
}
