package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/docker"
	"github.com/host-agent/host-agent/runtime/network/dockernet"
	"github.com/host-agent/host-agent/runtime/selftest"
)

// freeRange finds two consecutive loopback-free TCP ports for
// HOST_PORT_RANGE.
func freeRange(t *testing.T) string {
	t.Helper()
	for i := 0; i < 50; i++ {
		ln, err := net.Listen("tcp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if p >= 65535 {
			continue
		}
		if ln2, err := net.Listen("tcp", fmt.Sprintf(":%d", p+1)); err == nil {
			ln2.Close()
			return fmt.Sprintf("%d-%d", p, p+1)
		}
	}
	t.Fatal("no two consecutive free ports")
	return ""
}

func runSelftestBinary(t *testing.T, bin string, env ...string) (int, selftest.Report, string) {
	t.Helper()
	cmd := exec.Command(bin, "selftest", "--json")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Dir = t.TempDir()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var rep selftest.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("selftest --json output: %v\n%s\n%s", err, out, stderr.String())
	}
	return code, rep, string(out)
}

func result(rep selftest.Report, name string) selftest.Result {
	for _, r := range rep.Results {
		if r.Name == name {
			return r
		}
	}
	return selftest.Result{}
}

// TestSelftest runs `host-agent selftest --json` against a real containerd
// and the CNI plugins of this host, from a shell that has little of the
// running agent's environment (its custom BLOCKED_EGRESS_CIDRS and
// RENTAL_DNS lost), beside that agent and its tenant: the self-test reads
// the agent's configuration from STATE_DIR and says so, leaves the agent's
// rules exactly as they were (it checks them and writes none), passes with
// the GPU checks skipped for want of a driver and a test rental that
// reaches the "internet" but neither the host nor a LAN address, and leaves
// the tenant and its network alone. It fails, saying how to fix it, with
// containerd stopped, a broken CDI spec, the agent's rules flushed and,
// before any agent runs, with the CNI plugins missing, a LAN address left
// out of BLOCKED_EGRESS_CIDRS, or no internet.
func TestSelftest(t *testing.T) {
	w := newWorld(t)
	inet := testenv.AddPeer(t, "internet", "198.18.12.1", "198.18.12.2", 24)
	lan := testenv.AddPeer(t, "lan10", "10.217.12.1", "10.217.12.2", 24)
	for _, p := range []*testenv.Peer{inet, lan} {
		testenv.ServeIn(t, p.NS, "0.0.0.0:7000", p.Name)
		testenv.MustRouteInto(t, p.Addr, p.HostIf)
	}
	cdiDir := t.TempDir()
	// The agent's own settings: a blocked range and an allowed exception
	// of the provider's beyond the defaults (RENTAL_DNS comes with w.env).
	agentEnv := append(slices.Clone(w.env),
		"CDI_SPEC_DIRS="+cdiDir, "CONTAINERD_ROOT="+t.TempDir(), "DISK_RESERVE_GB=1", "HOST_PORT_RANGE="+freeRange(t),
		"CNI_PLUGIN_DIRS=/usr/lib/cni:/opt/cni/bin",
		"BLOCKED_EGRESS_CIDRS=10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,169.254.0.0/16,203.0.113.0/24",
		"ALLOWED_EGRESS_CIDRS=10.217.99.0/24",
		// containerd, even where a Docker answers at the default socket.
		"DOCKER_HOST=unix:///nonexistent/docker.sock",
		// The agent repairs its rules on this period: longer than the
		// test, so that the self-test is seen finding them changed (and
		// not the agent's repair, 2 s after the flush by default).
		"NETWORK_RECHECK_INTERVAL=10m",
	)
	// The operator's shell: where the agent keeps its state, its network's
	// names, an older blocked list, and the self-test's own settings.
	probes := []string{
		"SELFTEST_IMAGE=" + w.image,
		// Only the test's own namespaces: not the host's other addresses.
		"SELFTEST_EGRESS_PROBE=" + netip.AddrPortFrom(inet.Addr, 7000).String(),
		"SELFTEST_BLOCKED_PROBE=" + netip.AddrPortFrom(lan.Addr, 7000).String(),
	}
	shell := append([]string{
		"STATE_DIR=" + envValue(w.env, "STATE_DIR"), "CONTAINERD_ADDRESS=" + w.ctd.Address,
		"RENTAL_NETWORK_NAME=" + w.net.name, "RENTAL_SUBNET=" + w.net.subnet.String(),
		"BLOCKED_EGRESS_CIDRS=10.0.0.0/8", "DOCKER_HOST=unix:///nonexistent/docker.sock",
	}, probes...)

	// A tenant of the agent on the same network: the self-test's rentals
	// must leave it alone (the self-test's back end sees only its own
	// containerd namespace, so a sweep there would take the tenant's
	// network for a leftover).
	agent := startAgent(t, w.bin, agentEnv, w.agentLog)
	if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "tenant", "image": w.image, "command": []string{"sleep", "inf"}}); code != http.StatusOK {
		t.Fatalf("start the tenant: %d %v", code, body)
	}
	tenantNS := containerLabels(t, w.ctd.Address, "tenant")[runtime.LabelNetNS]
	// The bridge has its address now: the self-test's probes of the host
	// go to it.
	testenv.MustRouteInto(t, w.net.subnet.Addr().Next(), w.net.cfg.Bridge)
	tenantReachesInternet := func() {
		t.Helper()
		if got, err := testenv.Greeting(t, tenantNS, "tcp", inet.Addr, 7000); err != nil || !strings.HasPrefix(got, "internet") {
			t.Fatalf("the tenant reaches the internet peer: %q, %v", got, err)
		}
	}
	tenantReachesInternet()
	rules := agentRules(t, w.net.cfg.ChainPrefix)
	if !strings.Contains(rules, "203.0.113.0/24") || !strings.Contains(rules, "198.51.100.53/32") {
		t.Fatalf("the agent's rules lack its own settings:\n%s", rules)
	}

	code, rep, out := runSelftestBinary(t, w.bin, shell...)
	if after := agentRules(t, w.net.cfg.ChainPrefix); after != rules {
		t.Fatalf("the self-test changed the agent's rules from\n%s\nto\n%s", rules, after)
	}
	if code != 0 || !rep.Passed {
		t.Fatalf("self-test on a working host: exit %d\n%s", code, out)
	}
	if r := result(rep, "configuration"); r.Status != selftest.OK || !strings.Contains(r.Detail, filepath.Join(envValue(w.env, "STATE_DIR"), "agent-config.json")) ||
		!strings.Contains(r.Detail, "BLOCKED_EGRESS_CIDRS ignored") {
		t.Errorf("configuration: %+v, want the agent's configuration read and the shell's BLOCKED_EGRESS_CIDRS ignored", r)
	}
	for _, name := range []string{"runtime", "snapshotter", "cni-plugins", "cdi-specs", "disk", "host-ports", "test-rental", "rental-network"} {
		if r := result(rep, name); r.Status != selftest.OK {
			t.Errorf("%s: %+v, want ok", name, r)
		}
	}
	// This kernel has no XFS quotas: limits are watched, and why is said.
	if r := result(rep, "disk-limits"); r.Status != selftest.OK || !strings.HasPrefix(r.Detail, "watched: ") {
		t.Errorf("disk-limits: %+v, want ok, watched", r)
	}
	// Debian 12's runc says 1.1.5 and carries the CVE-2024-21626 fix: a
	// warning naming the CVE, never a failure.
	if r := result(rep, "runc"); r.Status != selftest.OK && (r.Status != selftest.Warn || !strings.Contains(r.Detail, "CVE-2024-21626")) {
		t.Errorf("runc: %+v, want ok or a warning naming CVE-2024-21626", r)
	}
	if r := result(rep, "rental-network"); !strings.Contains(r.Detail, "reached "+inet.Addr.String()) || !strings.Contains(r.Detail, "none of 2 ") {
		t.Errorf("rental-network: %q, want the internet peer reached and the gateway and LAN peer not", r.Detail)
	}
	tenantReachesInternet()
	if code, body := agent.call("GET", "/instances/tenant", nil); code != http.StatusOK || body["status"] != "running" {
		t.Fatalf("the tenant after the self-test: %d %v", code, body)
	}
	for _, name := range []string{"nvidia-driver", "pcie-link", "gpu-health"} {
		if r := result(rep, name); r.Status != selftest.Skip || r.Detail != "no NVIDIA driver" {
			t.Errorf("%s: %+v, want skipped with reason \"no NVIDIA driver\"", name, r)
		}
	}

	t.Run("broken CDI spec", func(t *testing.T) {
		bad := filepath.Join(cdiDir, "broken.yaml")
		if err := os.WriteFile(bad, []byte("cdiVersion: \"0.6.0\"\nkind: nvidia.com/gpu\ndevices: [ {name: \n"), 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(bad)
		code, rep, out := runSelftestBinary(t, w.bin, shell...)
		r := result(rep, "cdi-specs")
		if code == 0 || rep.Passed || r.Status != selftest.Fail || !strings.Contains(r.Detail, bad) || r.Fix == "" {
			t.Fatalf("with a broken spec: exit %d, cdi-specs %+v\n%s", code, r, out)
		}
	})
	t.Run("no internet", func(t *testing.T) {
		env := append(slices.Clone(shell), "SELFTEST_EGRESS_PROBE="+netip.AddrPortFrom(inet.Addr, 7001).String())
		code, rep, out := runSelftestBinary(t, w.bin, env...)
		r := result(rep, "rental-network")
		if code == 0 || r.Status != selftest.Fail || !strings.Contains(r.Detail, "no internet") || !strings.Contains(r.Fix, "SELFTEST_EGRESS_PROBE") {
			t.Fatalf("without internet: exit %d, rental-network %+v\n%s", code, r, out)
		}
	})
	t.Run("the agent's rules flushed", func(t *testing.T) {
		forward := w.net.cfg.ChainPrefix + "-FORWARD"
		if out, err := exec.Command("iptables", "-w", "5", "-F", forward).CombinedOutput(); err != nil {
			t.Fatalf("flush %s: %v: %s", forward, err, out)
		}
		flushed := agentRules(t, w.net.cfg.ChainPrefix)
		code, rep, out := runSelftestBinary(t, w.bin, shell...)
		r := result(rep, "rental-network")
		if code == 0 || r.Status != selftest.Fail || !strings.Contains(r.Detail, forward) || !strings.Contains(r.Fix, "restart the agent") || !strings.Contains(r.Fix, "NETWORK_RECHECK_INTERVAL") {
			t.Fatalf("with the agent's rules flushed: exit %d, rental-network %+v\n%s", code, r, out)
		}
		if after := agentRules(t, w.net.cfg.ChainPrefix); after != flushed {
			t.Fatalf("the self-test wrote the agent's flushed rules:\n%s", after)
		}
	})
	t.Run("containerd stopped", func(t *testing.T) {
		if err := w.ctd.Stop(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := w.ctd.Start(); err != nil {
				t.Error(err)
			}
		}()
		code, rep, out := runSelftestBinary(t, w.bin, shell...)
		r := result(rep, "runtime")
		if code == 0 || r.Status != selftest.Fail || !strings.Contains(r.Detail, "does not answer") || !strings.Contains(r.Fix, "start containerd") {
			t.Fatalf("with containerd stopped: exit %d, runtime %+v\n%s", code, r, out)
		}
	})

	// Before any agent runs (a state directory without an agent's
	// configuration), the self-test reads the environment and sets up the
	// rentals' network itself: a network of its own here, apart from the
	// agent's.
	preState := t.TempDir()
	pre := &testNetwork{name: "s" + w.net.name, subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 216, w.net.subnet.Addr().As4()[2] ^ 0x80, 0}), 24)}
	pre.cfg = networkConfig(config{StateDir: preState, Network: netConfig{Name: pre.name, RentalSubnet: pre.subnet}})
	t.Cleanup(func() { pre.remove(t) })
	preEnv := append([]string{"STATE_DIR=" + preState, "CONTAINERD_ADDRESS=" + w.ctd.Address,
		"RENTAL_NETWORK_NAME=" + pre.name, "RENTAL_SUBNET=" + pre.subnet.String(), "RENTAL_DNS=198.51.100.53",
		"CDI_SPEC_DIRS=" + cdiDir, "CONTAINERD_ROOT=" + t.TempDir(), "DISK_RESERVE_GB=1", "HOST_PORT_RANGE=" + freeRange(t),
		"CNI_PLUGIN_DIRS=/usr/lib/cni:/opt/cni/bin", "DOCKER_HOST=unix:///nonexistent/docker.sock"}, probes...)
	t.Run("before the agent: CNI plugins missing", func(t *testing.T) {
		env := append(slices.Clone(preEnv), "CNI_PLUGIN_DIRS="+t.TempDir())
		code, rep, out := runSelftestBinary(t, w.bin, env...)
		r := result(rep, "cni-plugins")
		if code == 0 || r.Status != selftest.Fail || !strings.Contains(r.Detail, "bridge") || !strings.Contains(r.Fix, "containernetworking-plugins") {
			t.Fatalf("without CNI plugins: exit %d, cni-plugins %+v\n%s", code, r, out)
		}
		if r := result(rep, "configuration"); !strings.Contains(r.Detail, "the environment") {
			t.Errorf("configuration: %+v, want the environment read", r)
		}
	})
	t.Run("before the agent: a LAN address not blocked", func(t *testing.T) {
		env := append(slices.Clone(preEnv), "BLOCKED_EGRESS_CIDRS=192.168.0.0/16")
		code, rep, out := runSelftestBinary(t, w.bin, env...)
		r := result(rep, "rental-network")
		if code == 0 || r.Status != selftest.Fail || !strings.Contains(r.Detail, lan.Addr.String()) || !strings.Contains(r.Fix, "BLOCKED_EGRESS_CIDRS") {
			t.Fatalf("with the LAN reachable: exit %d, rental-network %+v\n%s", code, r, out)
		}
	})
}

// agentRules is what iptables-save shows of the chains under prefix and
// the jumps to them.
func agentRules(t *testing.T, prefix string) string {
	t.Helper()
	var lines []string
	for _, table := range []string{"filter", "nat"} {
		out, err := exec.Command("iptables-save", "-t", table).Output()
		if err != nil {
			t.Fatalf("iptables-save -t %s: %v", table, err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, prefix+"-") {
				lines = append(lines, table+": "+l)
			}
		}
	}
	return strings.Join(lines, "\n")
}

// envValue is name's value in env (NAME=value entries).
func envValue(env []string, name string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

// TestSelftestTable checks the human-readable form names each failure's fix.
func TestSelftestTable(t *testing.T) {
	t.Parallel()
	rep := selftest.Report{Results: []selftest.Result{
		{Name: "runtime", Status: selftest.Fail, Detail: "containerd does not answer", Fix: "start containerd"},
		{Name: "nvidia-driver", Status: selftest.Skip, Detail: "no NVIDIA driver"},
	}}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"runtime", "FAIL", "fix: start containerd", "SKIP", "no NVIDIA driver", "self-test FAILED"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

// TestSelftestProbeSettings: the network check's probes are read as
// documented, and a bad one names its variable.
func TestSelftestProbeSettings(t *testing.T) {
	t.Parallel()
	env := func(kv ...string) func(string) (string, bool) {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	e, err := loadSelftestEnv(env())
	if err != nil || e.blockedSet || len(e.blocked) != 0 || !slices.Equal(e.egress, selftest.DefaultEgressProbes) {
		t.Fatalf("defaults: %+v, %v", e, err)
	}
	e, err = loadSelftestEnv(env("SELFTEST_BLOCKED_PROBE", "10.0.0.5:22, 192.168.1.1:80", "SELFTEST_EGRESS_PROBE", "none"))
	if err != nil || !e.blockedSet || len(e.blocked) != 2 || e.blocked[1] != netip.MustParseAddrPort("192.168.1.1:80") || e.egress != nil {
		t.Fatalf("explicit probes: %+v, %v", e, err)
	}
	for _, bad := range []struct{ k, v string }{
		{"SELFTEST_BLOCKED_PROBE", "10.0.0.5"},
		{"SELFTEST_EGRESS_PROBE", "[::1]:443"},
		{"SELFTEST_EGRESS_PROBE", "1.1.1.1:0"},
		{"SELFTEST_EGRESS_PROBE", "example.com:443"},
	} {
		if _, err := loadSelftestEnv(env(bad.k, bad.v)); err == nil || !strings.Contains(err.Error(), bad.k) {
			t.Errorf("%s=%s: %v, want an error naming the variable", bad.k, bad.v, err)
		}
	}
}

// TestSelftestOnDocker: on a host that gives the agent only Docker, the
// self-test checks Docker (not containerd), skips the CNI plugins, and runs
// both test rentals through the Docker back end in a scope of their own,
// the network one on the agent's Docker network: it reaches the "internet"
// but not the LAN or the host. Nothing of it is left on the daemon.
func TestSelftestOnDocker(t *testing.T) {
	w := newWorld(t)
	bin := testenv.DebianDockerd()
	if bin == "" {
		testenv.Require(t, "dockerd")
		bin = "dockerd"
	}
	inet := testenv.AddPeer(t, "internet", "198.18.13.1", "198.18.13.2", 24)
	lan := testenv.AddPeer(t, "lan10", "10.217.13.1", "10.217.13.2", 24)
	for _, p := range []*testenv.Peer{inet, lan} {
		testenv.ServeIn(t, p.NS, "0.0.0.0:7000", p.Name)
		testenv.MustRouteInto(t, p.Addr, p.HostIf)
	}
	if !testenv.DockerChainsPresent() {
		t.Cleanup(func() { testenv.RemoveDockerChains(t) })
	}
	dir, err := os.MkdirTemp("", "ha-st-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d, err := testenv.StartDockerd(dir, testenv.DockerdOptions{Bin: bin, Containerd: w.ctd.Address, IPTables: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	// The agent's Docker network under the test's names, removed (with
	// its rules) while dockerd still runs.
	netOpts := docker.NetworkOptions{Name: w.net.cfg.NetworkName,
		Config: dockernet.Config{Bridge: w.net.cfg.DockerBridge, Subnet: w.net.subnet, ChainPrefix: w.net.cfg.ChainPrefix}}
	t.Cleanup(func() {
		r, err := docker.New(docker.Options{Host: d.Host, StateDir: t.TempDir(), Network: &netOpts})
		if err != nil {
			t.Error(err)
			return
		}
		defer r.Close()
		if err := r.RemoveNetwork(context.Background()); err != nil {
			t.Error(err)
		}
	})

	env := append(slices.Clone(w.env),
		"CONTAINERD_ADDRESS="+filepath.Join(dir, "no-containerd.sock"), "DOCKER_HOST="+d.Host,
		"SELFTEST_IMAGE="+w.image, "CDI_SPEC_DIRS="+t.TempDir(), "CONTAINERD_ROOT="+t.TempDir(),
		"DISK_RESERVE_GB=1", "HOST_PORT_RANGE="+freeRange(t),
		"SELFTEST_EGRESS_PROBE="+netip.AddrPortFrom(inet.Addr, 7000).String(),
		"SELFTEST_BLOCKED_PROBE="+netip.AddrPortFrom(lan.Addr, 7000).String(),
	)
	code, rep, out := runSelftestBinary(t, w.bin, env...)
	if code != 0 || !rep.Passed {
		t.Fatalf("self-test on a Docker host: exit %d\n%s", code, out)
	}
	if r := result(rep, "runtime"); r.Status != selftest.OK || !strings.HasPrefix(r.Detail, "docker 20.10") {
		t.Errorf("runtime: %+v, want Docker 20.10 found", r)
	}
	if r := result(rep, "cni-plugins"); r.Status != selftest.Skip {
		t.Errorf("cni-plugins: %+v, want skipped on Docker", r)
	}
	if r := result(rep, "disk-limits"); r.Status != selftest.OK || !strings.HasPrefix(r.Detail, "watched: ") || !strings.Contains(r.Detail, "storage") {
		t.Errorf("disk-limits: %+v, want ok, watched, naming the daemon's storage", r)
	}
	if r := result(rep, "snapshotter"); r.Status != selftest.Skip {
		t.Errorf("snapshotter: %+v, want skipped on Docker", r)
	}
	for _, name := range []string{"test-rental", "rental-network"} {
		if r := result(rep, name); r.Status != selftest.OK {
			t.Errorf("%s: %+v, want ok", name, r)
		}
	}
	if r := result(rep, "rental-network"); !strings.Contains(r.Detail, "reached "+inet.Addr.String()) {
		t.Errorf("rental-network: %q, want the internet peer reached", r.Detail)
	}
	cl, err := client.New(client.WithHost(d.Host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	list, err := cl.ContainerList(context.Background(), client.ContainerListOptions{All: true})
	if err != nil || len(list.Items) != 0 {
		t.Fatalf("containers left on the daemon: %+v %v", list.Items, err)
	}

	// The GPUs that Docker's rentals hold, which the test rental must not
	// take, are read from their labels.
	ctx := context.Background()
	pull, err := cl.ImagePull(ctx, w.image, client.ImagePullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pull.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.ContainerCreate(ctx, client.ContainerCreateOptions{Image: w.image, Name: "gpu-tenant", Config: &container.Config{
		Labels: map[string]string{runtime.LabelInstanceID: "gpu-tenant", runtime.LabelGPUs: "GPU-a,GPU-b"}}}); err != nil {
		t.Fatal(err)
	}
	defer cl.ContainerRemove(ctx, "gpu-tenant", client.ContainerRemoveOptions{Force: true})
	held, err := selftest.DockerGPUHolders(d.Host)(ctx)
	if err != nil || len(held) != 2 || held["GPU-a"] != "gpu-tenant" || held["GPU-b"] != "gpu-tenant" {
		t.Fatalf("GPUs held on Docker: %v, %v; want GPU-a and GPU-b by gpu-tenant", held, err)
	}
}
