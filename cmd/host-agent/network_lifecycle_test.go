package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	ctdclient "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/containerd"
)

// tryCall is call for a request the agent may die during: it returns the
// transport error instead of failing the test.
func (a *agentProc) tryCall(method, path string, body any) (int, map[string]any, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, a.base+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out := map[string]any{}
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, nil
}

// waitDead waits for the agent process to have died.
func (a *agentProc) waitDead() {
	a.t.Helper()
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		a.t.Fatal("the agent did not die")
	}
}

func servingStart(id, image string, ports ...int) map[string]any {
	var ps []map[string]any
	for _, p := range ports {
		ps = append(ps, map[string]any{"container_port": p})
	}
	return map[string]any{"instance_id": id, "image": image, "command": []string{"serve", "8080", "sleep", "inf"}, "ports": ps}
}

// mustStart starts an instance and returns its host ports.
func mustStart(t *testing.T, a *agentProc, body map[string]any) map[string]int {
	t.Helper()
	code, resp := a.call("POST", "/start_instance", body)
	if code != http.StatusOK {
		t.Fatalf("start %v: %d %v", body["instance_id"], code, resp)
	}
	return hostPorts(t, resp)
}

func mustTerminate(t *testing.T, a *agentProc, id string) {
	t.Helper()
	if code, body := a.call("POST", "/terminate_instance", map[string]any{"instance_id": id, "timeout_seconds": 0}); code != http.StatusOK {
		t.Fatalf("terminate %s: %d %v", id, code, body)
	}
}

// answers waits until the payload answers a user on host port port, and
// says whether it did.
func answers(t *testing.T, user *testenv.Peer, port int) bool {
	t.Helper()
	testenv.MustRouteInto(t, user.Host, user.HostIf)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got, err := testenv.Greeting(t, user.NS, "tcp", user.Host, port); err == nil && strings.Contains(got, fmt.Sprintf("HOST_PORT_TCP_8080=%d ", port)) {
			return true
		}
	}
	return false
}

// checkCounts fails when what rentals leave on the host differs from
// before; the rules of the test's network are listed to show the leak.
func checkCounts(t *testing.T, tn *testNetwork, before netCounts, rulesBefore []string) {
	t.Helper()
	if after := tn.counts(t); after != before {
		t.Errorf("host counts before %+v, after %+v", before, after)
		rulesAfter := tn.ourRules(t)
		for _, r := range rulesAfter {
			if !slices.Contains(rulesBefore, r) {
				t.Errorf("rule left: %s", r)
			}
		}
	}
}

// 50 start/terminate cycles with published ports leave the host's
// iptables rules (every table), the network's IPAM leases, network
// namespaces and veths as they were.
func TestAgentNetworkCyclesLeakNothing(t *testing.T) {
	w := newWorld(t)
	agent := startAgent(t, w.bin, w.env, w.agentLog)
	// One cycle first: the image is pulled and portmap's shared chains
	// exist from then on.
	mustStart(t, agent, servingStart("cycle-warm", w.image, 8080))
	mustTerminate(t, agent, "cycle-warm")
	before, rules := w.net.counts(t), w.net.ourRules(t)
	seen := map[int]bool{}
	for i := range 50 {
		id := fmt.Sprintf("cycle-%d", i)
		ports := mustStart(t, agent, map[string]any{"instance_id": id, "image": w.image,
			"ports": []map[string]any{{"container_port": 22}, {"container_port": 53, "protocol": "udp"}}})
		if len(ports) != 2 {
			t.Fatalf("cycle %d: ports %v", i, ports)
		}
		for _, p := range ports {
			seen[p] = true
		}
		if i == 0 {
			if c := w.net.counts(t); c.Leases != before.Leases+1 || c.NetNS != before.NetNS+1 || c.Veths != before.Veths+1 {
				t.Fatalf("a running rental holds %+v, before %+v: the counts cannot see it", c, before)
			}
		}
		mustTerminate(t, agent, id)
	}
	checkCounts(t, w.net, before, rules)
	// A start whose task cannot start, after its network was set up,
	// leaves nothing either.
	code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "cycle-fail", "image": w.image,
		"entrypoint": []string{"/no/such/binary"}, "ports": []map[string]any{{"container_port": 22}}})
	if code < 400 || body["step"] != "start" {
		t.Fatalf("a start with a missing entrypoint: %d %v", code, body)
	}
	if code, _ := agent.call("GET", "/instances/cycle-fail", nil); code != http.StatusNotFound {
		t.Fatalf("the failed start left its instance: %d", code)
	}
	checkCounts(t, w.net, before, rules)
	t.Logf("50 cycles: counts %+v before and after; %d distinct host ports handed out", before, len(seen))
}

// The agent is killed (SIGKILL) between CNI ADD and the task's start, and
// between the task's kill and CNI DEL. After a restart no host port is
// handed out twice, the interrupted start completes when retried, the
// interrupted terminate when repeated, and then nothing is left; new
// starts work.
func TestAgentKilledDuringNetworkSetupAndTeardown(t *testing.T) {
	w := newWorld(t)
	user := testenv.AddPeer(t, "user", "198.18.3.1", "198.18.3.2", 24)
	agent := startAgent(t, w.bin, w.env, w.agentLog)
	mustStart(t, agent, servingStart("warm", w.image, 8080))
	mustTerminate(t, agent, "warm")
	before, rules := w.net.counts(t), w.net.ourRules(t)
	_ = agent.cmd.Process.Signal(syscall.SIGTERM)
	agent.waitDead()

	// Killed after CNI ADD, before the task exists.
	crashEnv := append(slices.Clone(w.env), faultEnv+"="+containerd.FaultAfterNetworkSetup)
	agent = startAgent(t, w.bin, crashEnv, w.agentLog)
	if code, body, err := agent.tryCall("POST", "/start_instance", servingStart("crash-add", w.image, 8080)); err == nil {
		t.Fatalf("the agent answered %d %v instead of dying", code, body)
	}
	agent.waitDead()
	labels := containerLabels(t, w.ctd.Address, "crash-add")
	recorded := runtime.PortsFromLabels(labels)
	if len(recorded) != 1 || labels[runtime.LabelIP] == "" {
		t.Fatalf("labels after the crash: %v", labels)
	}

	agent = startAgent(t, w.bin, w.env, w.agentLog)
	// The recorded port is not handed out again.
	other := mustStart(t, agent, servingStart("after-crash", w.image, 8080))
	if other["tcp/8080"] == int(recorded[0].HostPort) {
		t.Fatalf("host port %d handed out twice", recorded[0].HostPort)
	}
	// The scheduler retries the start: it completes, on the recorded port.
	got := mustStart(t, agent, servingStart("crash-add", w.image, 8080))
	if got["tcp/8080"] != int(recorded[0].HostPort) {
		t.Fatalf("retried start answered %v, the labels record %v", got, recorded)
	}
	for _, p := range []int{got["tcp/8080"], other["tcp/8080"]} {
		if !answers(t, user, p) {
			t.Fatalf("host port %d does not answer", p)
		}
	}
	mustTerminate(t, agent, "after-crash")
	_ = agent.cmd.Process.Signal(syscall.SIGTERM)
	agent.waitDead()

	// Killed after the task's kill, before CNI DEL.
	crashEnv = append(slices.Clone(w.env), faultEnv+"="+containerd.FaultBeforeNetworkTeardown)
	agent = startAgent(t, w.bin, crashEnv, w.agentLog)
	if code, body, err := agent.tryCall("POST", "/terminate_instance", map[string]any{"instance_id": "crash-add", "timeout_seconds": 0}); err == nil {
		t.Fatalf("the agent answered %d %v instead of dying", code, body)
	}
	agent.waitDead()

	agent = startAgent(t, w.bin, w.env, w.agentLog)
	if code, body := agent.call("GET", "/instances/crash-add", nil); code != http.StatusOK || fmt.Sprint(hostPorts(t, body)) != fmt.Sprint(got) {
		t.Fatalf("after the crash in terminate, crash-add: %d %v", code, body)
	}
	next := mustStart(t, agent, servingStart("after-crash-2", w.image, 8080))
	if next["tcp/8080"] == got["tcp/8080"] {
		t.Fatalf("host port %d of an instance being terminated handed out again", got["tcp/8080"])
	}
	mustTerminate(t, agent, "crash-add")
	mustTerminate(t, agent, "after-crash-2")
	checkCounts(t, w.net, before, rules)

	// And a new start works, on a port that answers.
	last := mustStart(t, agent, servingStart("fresh", w.image, 8080))
	if !answers(t, user, last["tcp/8080"]) {
		t.Fatalf("a start after the crashes does not answer on %v", last)
	}
	mustTerminate(t, agent, "fresh")
	checkCounts(t, w.net, before, rules)
}

// After an agent restart no host port is handed out twice and rentals keep
// answering on theirs; so they do after a containerd restart.
func TestAgentAndContainerdRestartKeepPorts(t *testing.T) {
	w := newWorld(t)
	user := testenv.AddPeer(t, "user", "198.18.4.1", "198.18.4.2", 24)
	agent := startAgent(t, w.bin, w.env, w.agentLog)
	mustStart(t, agent, servingStart("warm", w.image, 8080))
	mustTerminate(t, agent, "warm")
	before, rules := w.net.counts(t), w.net.ourRules(t)
	a := mustStart(t, agent, servingStart("keep-a", w.image, 8080))
	if !answers(t, user, a["tcp/8080"]) {
		t.Fatal("keep-a does not answer")
	}
	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	agent.waitDead()

	agent = startAgent(t, w.bin, w.env, w.agentLog)
	if code, body := agent.call("GET", "/instances/keep-a", nil); code != http.StatusOK || fmt.Sprint(hostPorts(t, body)) != fmt.Sprint(a) {
		t.Fatalf("keep-a after the agent's restart: %d %v", code, body)
	}
	held := map[int]string{a["tcp/8080"]: "keep-a"}
	for i := range 5 {
		id := fmt.Sprintf("keep-%d", i)
		p := mustStart(t, agent, servingStart(id, w.image, 8080))["tcp/8080"]
		if o, ok := held[p]; ok {
			t.Fatalf("host port %d handed to %s and %s", p, o, id)
		}
		held[p] = id
	}
	if !answers(t, user, a["tcp/8080"]) {
		t.Fatal("keep-a does not answer after the agent's restart")
	}

	if err := w.ctd.Restart(); err != nil {
		t.Fatal(err)
	}
	for p, id := range held {
		if !answers(t, user, p) {
			t.Fatalf("%s does not answer on %d after containerd's restart", id, p)
		}
	}
	// While the agent is down, an operator deletes keep-0's container: at
	// its start the agent tears down the network left without a container.
	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	agent.waitDead()
	deleteContainer(t, w.ctd.Address, "keep-0")
	agent = startAgent(t, w.bin, w.env, w.agentLog)
	for _, id := range held {
		if id != "keep-0" {
			mustTerminate(t, agent, id)
		}
	}
	checkCounts(t, w.net, before, rules)
}

// deleteContainer kills and deletes an instance's container behind the
// agent's back, as an operator's ctr would.
func deleteContainer(t *testing.T, addr, id string) {
	t.Helper()
	cl, err := ctdclient.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := namespaces.WithNamespace(context.Background(), "rentals")
	c, err := cl.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if task, err := c.Task(ctx, nil); err == nil {
		if _, err := task.Delete(ctx, ctdclient.WithProcessKill); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Delete(ctx, ctdclient.WithSnapshotCleanup); err != nil {
		t.Fatal(err)
	}
}

// A port of the range that another process on the host has bound is
// skipped; a range with too few free ports left is a 409 naming ports.
func TestAgentPortRangeBoundAndExhausted(t *testing.T) {
	w := newWorld(t)
	const first = 46170
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", first))
	if err != nil {
		t.Skipf("port %d is not free here: %v", first, err)
	}
	defer ln.Close()
	env := append(slices.Clone(w.env), fmt.Sprintf("HOST_PORT_RANGE=%d-%d", first, first+2))
	var agent *agentProc
	for {
		addr := freeAddr(t)
		_, p, _ := net.SplitHostPort(addr)
		if p != fmt.Sprint(first+1) && p != fmt.Sprint(first+2) {
			agent = startAgentOn(t, w.bin, env, w.agentLog, addr, addr)
			break
		}
	}
	got := mustStart(t, agent, servingStart("two", w.image, 22, 80))
	if got["tcp/22"] != first+1 || got["tcp/80"] != first+2 {
		t.Fatalf("ports %v: want %d skipped (bound) and the other two handed out", got, first)
	}
	code, body := agent.call("POST", "/start_instance", servingStart("three", w.image, 8080))
	if code != http.StatusConflict || body["field"] != "ports" {
		t.Fatalf("exhausted range: %d %v; want 409 naming ports", code, body)
	}
	if code, _ := agent.call("GET", "/instances/three", nil); code != http.StatusNotFound {
		t.Fatalf("a refused start left instance three: %d", code)
	}
	_, host := agent.call("GET", "/host", nil)
	if n, _ := host["network"].(map[string]any); n == nil || n["ports_free"] != float64(1) {
		t.Errorf("host network %v", host["network"])
	}
	mustTerminate(t, agent, "two")
}

// /readyz fails, naming the plugin, once a CNI plugin is gone, and
// recovers when it is back.
func TestAgentReadyzNeedsPlugins(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	ents, err := os.ReadDir("/usr/lib/cni")
	if err != nil {
		t.Skip("no /usr/lib/cni")
	}
	for _, e := range ents {
		if err := os.Symlink(filepath.Join("/usr/lib/cni", e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	agent := startAgent(t, w.bin, append(slices.Clone(w.env), "CNI_PLUGIN_DIRS="+dir), w.agentLog)
	if err := os.Remove(filepath.Join(dir, "portmap")); err != nil {
		t.Fatal(err)
	}
	// The agent keeps a readiness answer for a second: the change shows
	// on a later one.
	if code, body := readyzBecomes(agent, http.StatusServiceUnavailable); code != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(body["error"]), "portmap") {
		t.Fatalf("readyz without portmap: %d %v", code, body)
	}
	if err := os.Symlink("/usr/lib/cni/portmap", filepath.Join(dir, "portmap")); err != nil {
		t.Fatal(err)
	}
	if code, body := readyzBecomes(agent, http.StatusOK); code != http.StatusOK {
		t.Fatalf("readyz with portmap back: %d %v", code, body)
	}
}

// readyzBecomes asks GET /readyz until it answers want, for at most 10
// seconds, and returns the last answer.
func readyzBecomes(a *agentProc, want int) (int, map[string]any) {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code, body := a.call("GET", "/readyz", nil)
		if code == want || time.Now().After(deadline) {
			return code, body
		}
	}
}
