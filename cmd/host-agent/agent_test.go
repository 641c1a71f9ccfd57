package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/gorilla/websocket"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/events"
)

const e2eToken = "e2e-token-0123456789abcdef"

// agentProc is the built agent binary running as a separate process, as a
// provider runs it.
type agentProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	base string
	done chan error
}

// builtAgent is the agent binary, built once for the package's tests by
// the first buildAgent (each build is a link of the whole agent) and
// removed by TestMain.
var builtAgent struct {
	once      sync.Once
	dir, path string
	err       error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtAgent.dir != "" {
		os.RemoveAll(builtAgent.dir)
	}
	os.Exit(code)
}

// buildAgent returns the agent binary, built from this package as
// shipped. Tests run it, never change it.
func buildAgent(t *testing.T) string {
	t.Helper()
	builtAgent.once.Do(func() {
		if builtAgent.dir, builtAgent.err = os.MkdirTemp("", "host-agent-test-"); builtAgent.err != nil {
			return
		}
		bin := filepath.Join(builtAgent.dir, "host-agent")
		if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
			builtAgent.err = fmt.Errorf("build agent: %v\n%s", err, out)
			return
		}
		builtAgent.path = bin
	})
	if builtAgent.err != nil {
		t.Fatal(builtAgent.err)
	}
	return builtAgent.path
}

func freeAddr(t *testing.T) string { return testenv.AgentAddr(t) }

func startAgent(t *testing.T, bin string, env []string, logPath string) *agentProc {
	t.Helper()
	addr := freeAddr(t)
	return startAgentOn(t, bin, env, logPath, addr, addr)
}

// startAgentOn starts the agent listening on listen, and calls it on addr.
func startAgentOn(t *testing.T, bin string, env []string, logPath, listen, addr string) *agentProc {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(append([]string{"PATH=" + os.Getenv("PATH")}, env...), "LISTEN_ADDR="+listen)
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
	a := &agentProc{t: t, cmd: cmd, base: "http://" + addr, done: make(chan error, 1)}
	go func() { a.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-a.done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("agent exited at start: %v\n%s", err, b)
		default:
		}
		if resp, err := http.Get(a.base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return a
			}
		}
	}
	b, _ := os.ReadFile(logPath)
	t.Fatalf("agent not ready in time:\n%s", b)
	return nil
}

// call sends a JSON request with the token and decodes the JSON answer.
func (a *agentProc) call(method, path string, body any) (int, map[string]any) {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out := map[string]any{}
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// eventStream reads /ws into a channel.
func (a *agentProc) eventStream(since string) <-chan events.Event {
	a.t.Helper()
	url := strings.Replace(a.base, "http://", "ws://", 1) + "/ws"
	if since != "" {
		url += "?since=" + since
	}
	conn, resp, err := websocket.DefaultDialer.Dial(url, http.Header{"Authorization": {"Bearer " + e2eToken}})
	if err != nil {
		a.t.Fatalf("dial /ws: %v (%v)", err, resp)
	}
	a.t.Cleanup(func() { conn.Close() })
	ch := make(chan events.Event, 1024)
	go func() {
		defer close(ch)
		for {
			var e events.Event
			if err := conn.ReadJSON(&e); err != nil {
				return
			}
			ch <- e
		}
	}()
	return ch
}

// await reads the stream until an event matching typ and id arrives.
func await(t *testing.T, ch <-chan events.Event, id, typ string) events.Event {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case e, ok := <-ch:
			if !ok {
				t.Fatalf("event stream closed while waiting for %s of %s", typ, id)
			}
			if e.InstanceID == id && e.Type == typ {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s event for %s", typ, id)
		}
	}
}

// world is what an end-to-end test runs the agent in: a private containerd,
// a registry on 127.0.0.1 with the payload image, and the built agent.
type world struct {
	ctd      *testenv.Containerd
	image    string
	bin      string
	env      []string
	agentLog string
	net      *testNetwork
}

func newWorld(t *testing.T) *world {
	t.Helper()
	testenv.Require(t, "containerd", "containerd-shim-runc-v2", "runc")
	ctd, err := testenv.StartContainerd(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctd.Close() })
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	image, err := reg.PushPayload("payload:e2e")
	if err != nil {
		t.Fatal(err)
	}
	w := &world{
		ctd:      ctd,
		image:    image,
		bin:      buildAgent(t),
		agentLog: filepath.Join(t.TempDir(), "agent.log"),
	}
	state := t.TempDir()
	w.net = newTestNetwork(t, state)
	w.env = append([]string{"AGENT_ID=e2e-host", "AGENT_TOKEN=" + e2eToken, "CONTAINERD_ADDRESS=" + ctd.Address, "STATE_DIR=" + state}, w.net.env()...)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(w.agentLog)
			t.Logf("agent log:\n%s", b)
		}
	})
	return w
}

// TestAgentEndToEnd runs the built agent against a real containerd and a
// registry on 127.0.0.1, and drives it as the central scheduler would:
// start, events, exit codes, an agent crash and restart, terminate, and a
// graceful stop that leaves tenants running.
func TestAgentEndToEnd(t *testing.T) {
	w := newWorld(t)
	ctd, image, bin, env, agentLog := w.ctd, w.image, w.bin, w.env, w.agentLog

	agent := startAgent(t, bin, env, agentLog)
	// Without the token nothing but health answers.
	if resp, err := http.Post(agent.base+"/start_instance", "application/json", strings.NewReader(`{}`)); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unauthenticated start: %v %v", resp.StatusCode, err)
	}
	evs := agent.eventStream("")

	// This machine has no NVIDIA driver: zero GPUs, and GPU rentals are
	// refused while CPU rentals run.
	if code, body := agent.call("GET", "/gpus", nil); code != http.StatusOK || len(body["gpus"].([]any)) != 0 {
		t.Fatalf("GET /gpus on a host without GPUs: %d %v", code, body)
	}
	if code, body := agent.call("GET", "/host", nil); code != http.StatusOK || body["agent_id"] != "e2e-host" {
		t.Fatalf("GET /host: %d %v", code, body)
	}
	// This machine's kernel has no XFS quotas: disk limits are watched,
	// and the host says so and why.
	if _, body := agent.call("GET", "/host", nil); fmt.Sprint(body["disk_limit"]) == "<nil>" ||
		body["disk_limit"].(map[string]any)["mode"] != "watched" || body["disk_limit"].(map[string]any)["why"] == "" {
		t.Fatalf("GET /host's disk_limit: %v", body["disk_limit"])
	}
	// A disk limit larger than the disk is refused, naming disk.
	if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "e2e-huge", "image": image,
		"resources": map[string]any{"disk_gb": 1 << 20}}); code != http.StatusConflict || body["field"] != "disk" {
		t.Fatalf("a 1 PiB disk limit: %d %v, want 409 field disk", code, body)
	}
	if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "gpu-1", "image": image, "gpu_count": 1}); code != http.StatusConflict || !strings.Contains(fmt.Sprint(body["error"]), "0 free") {
		t.Fatalf("GPU rental on a host without GPUs: %d %v", code, body)
	}

	code, body := agent.call("POST", "/start_instance", map[string]any{
		"instance_id": "e2e-web", "image": image, "command": []string{"echo", "hello", "sleep", "inf"},
	})
	if code != http.StatusOK || body["message"] != "Instance started successfully" || body["container_id"] != "e2e-web" || body["status"] != "running" {
		t.Fatalf("start: %d %v", code, body)
	}
	await(t, evs, "e2e-web", events.TypeInstancePulling)
	await(t, evs, "e2e-web", events.TypeInstanceRunning)
	// It named no disk limit: it got the default, recorded on it.
	if _, body := agent.call("GET", "/instances/e2e-web", nil); fmt.Sprint(body["disk_limit_bytes"]) == "<nil>" {
		t.Fatalf("e2e-web has no disk limit: %v", body)
	}

	if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "e2e-exit", "image": image, "command": []string{"exit", "4"}}); code != http.StatusOK {
		t.Fatalf("start e2e-exit: %d %v", code, body)
	}
	if e := await(t, evs, "e2e-exit", events.TypeInstanceExited); e.ExitCode == nil || *e.ExitCode != 4 {
		t.Fatalf("exit event %+v", e)
	}
	if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "e2e-late", "image": image, "command": []string{"sleep", "2", "exit", "9"}}); code != http.StatusOK {
		t.Fatalf("start e2e-late: %d %v", code, body)
	}
	_, before := agent.call("GET", "/instances/e2e-web", nil)

	// The agent crashes. Tenants run on; e2e-late exits meanwhile.
	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	<-agent.done
	cl, err := containerd.New(ctd.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	nctx := namespaces.WithNamespace(context.Background(), "rentals")
	time.Sleep(3 * time.Second)
	c, err := cl.LoadContainer(nctx, "e2e-web")
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Task(nctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := task.Status(nctx); err != nil || st.Status != containerd.Running {
		t.Fatalf("e2e-web while the agent is down: %v %v", st, err)
	}

	agent = startAgent(t, bin, env, agentLog)
	evs = agent.eventStream("1") // resume from long ago: told what was lost, then the backlog
	if e := await(t, evs, "e2e-late", events.TypeInstanceExited); e.ExitCode == nil || *e.ExitCode != 9 {
		t.Fatalf("exit while the agent was down: %+v", e)
	}
	code, after := agent.call("GET", "/instances/e2e-web", nil)
	if code != http.StatusOK || after["status"] != "running" || fmt.Sprint(after["pid"]) != fmt.Sprint(before["pid"]) {
		t.Fatalf("e2e-web after agent restart: %d %v (before %v)", code, after, before)
	}
	code, list := agent.call("GET", "/instances", nil)
	if n := len(list["instances"].([]any)); code != http.StatusOK || n != 3 {
		t.Fatalf("instances after restart: %d %v", code, list)
	}

	if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "e2e-exit"}); code != http.StatusOK || body["message"] != "Instance terminated successfully" {
		t.Fatalf("terminate: %d %v", code, body)
	}
	await(t, evs, "e2e-exit", events.TypeInstanceTerminated)
	if code, _ := agent.call("GET", "/instances/e2e-exit", nil); code != http.StatusNotFound {
		t.Fatalf("terminated instance still answers %d", code)
	}

	// A graceful stop leaves the tenant running.
	_ = agent.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-agent.done:
		if err != nil {
			t.Fatalf("agent exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not stop on SIGTERM")
	}
	if st, err := task.Status(nctx); err != nil || st.Status != containerd.Running {
		t.Fatalf("e2e-web after the agent stopped: %v %v", st, err)
	}
}

func TestAgentRefusesToStartWithoutToken(t *testing.T) {
	t.Parallel()
	bin := buildAgent(t)
	cmd := exec.Command(bin)
	cmd.Env = []string{"AGENT_ID=x", "PATH=" + os.Getenv("PATH")}
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "AGENT_TOKEN") {
		t.Fatalf("agent without a token: err=%v output=%s", err, out)
	}
}

// TestAgentRefusesAnOpenTokenFile: a token file others can read stops the
// agent at start with a message naming the file.
func TestAgentRefusesAnOpenTokenFile(t *testing.T) {
	t.Parallel()
	bin := buildAgent(t)
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte(e2eToken), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(token, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{"AGENT_ID=x", "AGENT_TOKEN_FILE=" + token, "PATH=" + os.Getenv("PATH")}
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), token) || !strings.Contains(string(out), "0644") {
		t.Fatalf("agent with a 0644 token file: err=%v output=%s", err, out)
	}
}
