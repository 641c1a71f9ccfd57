package main

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/moby/moby/client"
	"github.com/vishvananda/netlink"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/docker"
)

// dockerWorld is a world with a dockerd that manages iptables, as a
// production one does (so that rentals on Docker get the agent's Docker
// network), and that network under the test's names. Whatever the agents
// and the daemon leave (the network, its bridge, Docker's chains on a host
// that had none) is removed when the test ends.
type dockerWorld struct {
	*world
	d *testenv.Dockerd
	// dir holds the dockerd's files and the sockets nothing answers on.
	dir    string
	bridge string
}

func newDockerWorld(t *testing.T) *dockerWorld {
	t.Helper()
	w := newWorld(t)
	bin := testenv.DebianDockerd()
	if bin == "" {
		testenv.Require(t, "dockerd")
		bin = "dockerd"
	}
	if !testenv.DockerChainsPresent() {
		t.Cleanup(func() { testenv.RemoveDockerChains(t) })
	}
	dir, err := os.MkdirTemp("", "ha-sw-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	dw := &dockerWorld{world: w, dir: dir, bridge: dockerNetwork(config{Network: netConfig{Name: w.net.name}}).Bridge}
	if dw.d, err = testenv.StartDockerd(dir, testenv.DockerdOptions{Bin: bin, Containerd: w.ctd.Address, IPTables: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dw.d.Close)
	removeDockerNetwork(t, dw.d, w)
	return dw
}

// removeDockerNetwork removes, when the test ends and before d stops, the
// containers on d and the agent's Docker network of w's names (its rules,
// its bridge) that an agent on d made.
func removeDockerNetwork(t *testing.T, d *testenv.Dockerd, w *world) {
	o := dockerNetwork(config{Network: netConfig{Name: w.net.name, RentalSubnet: w.net.subnet}})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cl, err := client.New(client.WithHost(d.Host), client.WithAPIVersionNegotiation())
		if err != nil {
			t.Error(err)
			return
		}
		defer cl.Close()
		if list, err := cl.ContainerList(ctx, client.ContainerListOptions{All: true}); err == nil {
			for _, c := range list.Items {
				_, _ = cl.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
			}
		}
		r, err := docker.New(docker.Options{Host: d.Host, StateDir: t.TempDir(), Network: o})
		if err != nil {
			t.Error(err)
			return
		}
		defer r.Close()
		if err := r.RemoveNetwork(ctx); err != nil {
			t.Error(err)
		}
		// dockerd removes the bridge with the network; one it no longer
		// knows (its daemon restarted with another data root) is removed
		// here.
		if l, err := netlink.LinkByName(o.Bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
}

// env is the agent's environment with containerd and Docker answering
// or not.
func (dw *dockerWorld) env(withContainerd, withDocker bool) []string {
	env := slices.Clone(dw.world.env)
	if !withContainerd {
		env = append(env, "CONTAINERD_ADDRESS="+filepath.Join(dw.dir, "no-containerd.sock"))
	}
	if withDocker {
		return append(env, "DOCKER_HOST="+dw.d.Host)
	}
	return append(env, "DOCKER_HOST=unix://"+filepath.Join(dw.dir, "no-docker.sock"))
}

// routeDev is the device the host sends traffic for addr through.
func routeDev(t *testing.T, addr string) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "route", "get", addr).CombinedOutput()
	if err != nil {
		t.Fatalf("ip route get %s: %v\n%s", addr, err, out)
	}
	f := strings.Fields(string(out))
	if i := slices.Index(f, "dev"); i >= 0 && i+1 < len(f) {
		return f[i+1]
	}
	t.Fatalf("ip route get %s: no device in %q", addr, out)
	return ""
}

// subnetRoutes names the devices with a route to exactly prefix.
func subnetRoutes(t *testing.T, prefix netip.Prefix) []string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "route", "show", "exact", prefix.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ip route show: %v\n%s", err, out)
	}
	var devs []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if i := slices.Index(f, "dev"); i >= 0 && i+1 < len(f) {
			devs = append(devs, f[i+1])
		}
	}
	return devs
}

// startUnready starts the agent and returns what /readyz answers once it
// answers at all.
func startUnready(t *testing.T, bin string, env []string, logPath string) (int, string) {
	t.Helper()
	addr := freeAddr(t)
	cmd := exec.Command(bin)
	cmd.Env = append(append([]string{"PATH=" + os.Getenv("PATH")}, env...), "LISTEN_ADDR="+addr)
	cmd.Dir = t.TempDir()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("agent exited at start:\n%s", b)
		default:
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// Stopped before the next agent starts: two agents of one network
		// never run at once (the second is refused).
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-done
		return resp.StatusCode, string(b)
	}
	t.Fatal("agent did not answer /readyz in time")
	return 0, ""
}

// TestAgentAfterDockerAgent: an agent that ran rentals on Docker leaves its
// Docker network's bridge on the host, routing RENTAL_SUBNET. An agent
// started after it with the same configuration takes containerd, and its
// rentals' traffic takes its own bridge, not the idle Docker one; with
// neither runtime answering it serves, and /readyz answers 503.
func TestAgentAfterDockerAgent(t *testing.T) {
	dw := newDockerWorld(t)
	a := startAgent(t, dw.bin, dw.env(false, true), dw.agentLog)
	assertRuntime(t, a, "docker")
	code, body := a.call("POST", "/start_instance", map[string]any{"instance_id": "on-docker", "image": dw.image, "command": []string{"sleep", "inf"}})
	if code != http.StatusOK {
		t.Fatalf("start on Docker: %d %v", code, body)
	}
	if code, body := a.call("POST", "/terminate_instance", map[string]any{"instance_id": "on-docker"}); code != http.StatusOK {
		t.Fatalf("terminate on Docker: %d %v", code, body)
	}
	_ = a.cmd.Process.Kill()
	<-a.done
	if devs := subnetRoutes(t, dw.net.subnet); !slices.Equal(devs, []string{dw.bridge}) {
		t.Fatalf("routes to %s after the agent on Docker: %v, want its bridge %s", dw.net.subnet, devs, dw.bridge)
	}

	a = startAgent(t, dw.bin, dw.env(true, true), dw.agentLog)
	assertRuntime(t, a, "containerd")
	code, body = a.call("POST", "/start_instance", map[string]any{"instance_id": "on-containerd", "image": dw.image, "command": []string{"sleep", "inf"}})
	if code != http.StatusOK {
		t.Fatalf("start on containerd: %d %v", code, body)
	}
	cl, err := containerd.New(dw.ctd.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c, err := cl.LoadContainer(namespaces.WithNamespace(context.Background(), "rentals"), "on-containerd")
	if err != nil {
		t.Fatal(err)
	}
	labels, err := c.Labels(namespaces.WithNamespace(context.Background(), "rentals"))
	if err != nil || labels[runtime.LabelIP] == "" {
		t.Fatalf("rental's labels: %v %v", labels, err)
	}
	// Replies to the rental must go to the rentals' bridge of containerd.
	if dev := routeDev(t, labels[runtime.LabelIP]); dev != dw.net.cfg.Bridge {
		t.Errorf("the host routes the rental's address %s through %s, want %s", labels[runtime.LabelIP], dev, dw.net.cfg.Bridge)
	}
	if code, body := a.call("POST", "/terminate_instance", map[string]any{"instance_id": "on-containerd"}); code != http.StatusOK {
		t.Fatalf("terminate on containerd: %d %v", code, body)
	}
	_ = a.cmd.Process.Kill()
	<-a.done

	if code, body := startUnready(t, dw.bin, dw.env(false, false), dw.agentLog); code != http.StatusServiceUnavailable || !strings.Contains(body, "containerd unavailable") {
		t.Fatalf("readyz with neither runtime: %d %s", code, body)
	}
}

// TestRuntimeStaysWithItsRentals: the agent remembers the runtime it runs
// on in STATE_DIR/runtime and does not leave it while it has rentals. With
// containerd's rentals running, an agent whose containerd probe fails
// while Docker answers (RUNTIME=auto) stays on containerd and /readyz says
// why; RUNTIME=docker is refused at start, naming RUNTIME. Once the
// rentals are gone it switches, and the same holds for Docker's rentals.
func TestRuntimeStaysWithItsRentals(t *testing.T) {
	w := newWorld(t)
	bin := testenv.DebianDockerd()
	if bin == "" {
		testenv.Require(t, "dockerd")
		bin = "dockerd"
	}
	dir, err := os.MkdirTemp("", "ha-rs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d, err := testenv.StartDockerd(dir, testenv.DockerdOptions{Bin: bin, Containerd: w.ctd.Address})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	removeDockerNetwork(t, d, w)
	dw := &dockerWorld{world: w, d: d, dir: dir}
	stateDir := ""
	for _, e := range w.env {
		if v, ok := strings.CutPrefix(e, "STATE_DIR="); ok {
			stateDir = v
		}
	}
	remembered := func() string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(stateDir, "runtime"))
		if err != nil {
			t.Fatalf("STATE_DIR/runtime: %v", err)
		}
		return strings.TrimSpace(string(b))
	}
	stop := func(a *agentProc) {
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	start := func(a *agentProc, id string) {
		t.Helper()
		code, body := a.call("POST", "/start_instance", map[string]any{"instance_id": id, "image": w.image, "command": []string{"sleep", "inf"}})
		if code != http.StatusOK {
			t.Fatalf("start %s: %d %v", id, code, body)
		}
	}
	terminate := func(a *agentProc, id string) {
		t.Helper()
		if code, body := a.call("POST", "/terminate_instance", map[string]any{"instance_id": id}); code != http.StatusOK {
			t.Fatalf("terminate %s: %d %v", id, code, body)
		}
	}

	// A rental on containerd.
	a := startAgent(t, w.bin, dw.env(true, true), w.agentLog)
	assertRuntime(t, a, "containerd")
	if got := remembered(); got != "containerd" {
		t.Fatalf("STATE_DIR/runtime = %q, want containerd", got)
	}
	start(a, "on-ctd")
	stop(a)

	// containerd misses the probe; Docker answers. The agent waits for
	// containerd.
	code, body := startUnready(t, w.bin, dw.env(false, true), w.agentLog)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "containerd unavailable") ||
		!strings.Contains(body, "staying on containerd, not switching to docker") {
		t.Fatalf("readyz after a missed containerd probe: %d %s", code, body)
	}
	if got := remembered(); got != "containerd" {
		t.Fatalf("STATE_DIR/runtime = %q after the missed probe, want containerd", got)
	}

	// A forced switch under the rental is refused at start.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.bin)
	cmd.Env = append(append([]string{"PATH=" + os.Getenv("PATH"), "LISTEN_ADDR=" + freeAddr(t)}, dw.env(true, true)...), "RUNTIME=docker")
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "RUNTIME: docker, but containerd") || !strings.Contains(string(out), "still runs 1 rental(s)") {
		t.Fatalf("RUNTIME=docker under a containerd rental: %v\n%s", err, out)
	}

	// The rental gone, RUNTIME=docker switches; a rental on Docker.
	a = startAgent(t, w.bin, dw.env(true, true), w.agentLog)
	terminate(a, "on-ctd")
	stop(a)
	a = startAgent(t, w.bin, append(dw.env(true, true), "RUNTIME=docker"), w.agentLog)
	assertRuntime(t, a, "docker")
	if got := remembered(); got != "docker" {
		t.Fatalf("STATE_DIR/runtime = %q, want docker", got)
	}
	start(a, "on-docker")
	stop(a)

	// containerd answers again, and auto would take it: the agent stays on
	// Docker while its rental runs there, then switches back.
	a = startAgent(t, w.bin, dw.env(true, true), w.agentLog)
	assertRuntime(t, a, "docker")
	terminate(a, "on-docker")
	stop(a)
	a = startAgent(t, w.bin, dw.env(true, true), w.agentLog)
	assertRuntime(t, a, "containerd")
	if got := remembered(); got != "containerd" {
		t.Fatalf("STATE_DIR/runtime = %q, want containerd", got)
	}
}
