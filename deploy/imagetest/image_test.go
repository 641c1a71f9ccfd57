// Package imagetest runs the agent's image as the README tells providers to
// run it. deploy/image-test.sh builds the image on a real dockerd and runs
// this test with it; on its own the test skips, saying what it needs.
package imagetest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/host-agent/host-agent/internal/testenv"
)

// tenantKey is a tenant's public key, as the scheduler passes it on.
var tenantKey = func() string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " tenant@laptop"
}()

// readmeBlock returns the shell block of README.md that follows the marker
// <!-- image-test: NAME -->, so that the test runs what providers read.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- image-test: "+name+" -->")
	if !ok {
		t.Fatalf("README.md has no <!-- image-test: %s --> block", name)
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	if !ok {
		t.Fatal("no ```sh block after the marker")
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("unterminated block")
	}
	return block
}

// adapt points the README's command at this run's daemons, and nothing
// else: the host's socket (containerd's or Docker's) is the test's private
// one, the image is the one just built, and the API listens on a free
// loopback port (so that the test does not take :8080 on a shared machine).
func adapt(t *testing.T, block, hostSocket, sock, image, listen string) string {
	t.Helper()
	for _, r := range [][2]string{
		{"-v " + hostSocket + ":", "-v " + sock + ":"},
		{"ghcr.io/OWNER/host-agent:latest", "-e LISTEN_ADDR=" + listen + " " + image},
	} {
		if !strings.Contains(block, r[0]) {
			t.Fatalf("README's command no longer has %q; update the test with it", r[0])
		}
		block = strings.Replace(block, r[0], r[1], 1)
	}
	return block
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestImageAsDeployed runs the README's docker run line with the
// containerd socket mounted and rents through the containerized agent: the
// rental runs on the host's containerd in "rentals", ctr lists it, its
// logs are readable through the API, its published port answers a user on
// the host's address, and it terminates.
func TestImageAsDeployed(t *testing.T) {
	image, sock := os.Getenv("HOST_AGENT_IMAGE"), os.Getenv("HOST_AGENT_IMAGE_CONTAINERD")
	if image == "" || sock == "" || os.Getenv("DOCKER_HOST") == "" {
		t.Skip("run by deploy/image-test.sh, which builds the image on a private dockerd (needs HOST_AGENT_IMAGE, HOST_AGENT_IMAGE_CONTAINERD, DOCKER_HOST)")
	}
	testenv.Require(t, "docker", "ctr")

	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	payload, err := reg.PushPayload("payload:image-test")
	if err != nil {
		t.Fatal(err)
	}

	newHost(t)
	a := deploy(t, readmeBlock(t, "docker-run-containerd"), "/run/containerd/containerd.sock", sock, image)
	// Afterwards, the rentals' bridge and rules go as the README says, so
	// that the Docker-only run finds the host as a Docker host has it.
	t.Cleanup(func() {
		_ = exec.Command("bash", "-c", readmeBlock(t, "remove-network")).Run()
		_ = exec.Command("ip", "link", "del", "hostagent0").Run()
	})
	if code, body := a.call("GET", "/host", nil); code != http.StatusOK || body["agent_version"] != "image-test" || body["agent_commit"] == "" {
		t.Fatalf("GET /host: %d %v", code, body)
	}

	id := fmt.Sprintf("image-test-%d", time.Now().UnixNano())
	code, body := a.call("POST", "/start_instance", map[string]any{
		"instance_id": id, "image": payload, "command": []string{"echo", "hello from the host's containerd", "cat", "/root/.ssh/authorized_keys", "serve", "8080", "sleep", "inf"},
		"ports":               []map[string]any{{"container_port": 8080}},
		"ssh_authorized_keys": []string{tenantKey},
	})
	if code != http.StatusOK || body["status"] != "running" {
		t.Fatalf("start through the containerized agent: %d %v", code, body)
	}
	hostPort := publishedPort(t, body)
	t.Cleanup(func() { a.call("POST", "/terminate_instance", map[string]any{"instance_id": id, "timeout_seconds": 1}) })

	if ls := run(t, "ctr", "--address", sock, "-n", "rentals", "containers", "ls"); !strings.Contains(ls, id) {
		t.Fatalf("ctr -n rentals containers ls does not show %s:\n%s", id, ls)
	}
	if tasks := run(t, "ctr", "--address", sock, "-n", "rentals", "tasks", "ls"); !strings.Contains(tasks, id) || !strings.Contains(tasks, "RUNNING") {
		t.Fatalf("the rental's task is not running on the host's containerd:\n%s", tasks)
	}
	if !a.logsShow(id, tenantKey) {
		t.Fatal("the tenant's SSH key is not in the rental: the daemon mounts it from STATE_DIR on the host")
	}
	if !a.logsShow(id, "hello from the host's containerd") {
		t.Fatal("the rental's log is not readable through the containerized agent")
	}
	// The operator's view from inside the agent's container, as the README
	// says: the client commands find the agent and its token by themselves.
	out, err := exec.Command("docker", "exec", "host-agent", "host-agent", "ls", "--json").CombinedOutput()
	var list struct {
		Instances []struct {
			InstanceID string `json:"instance_id"`
			Status     string `json:"status"`
		} `json:"instances"`
	}
	if err != nil || json.Unmarshal(out, &list) != nil || len(list.Instances) != 1 || list.Instances[0].InstanceID != id || list.Instances[0].Status != "running" {
		t.Fatalf("docker exec host-agent host-agent ls --json: %v\n%s", err, out)
	}
	// A user reaches the rental's port on the host's address, through the
	// network the containerized agent made on the host.
	portAnswers(t, "198.18.7", hostPort)
	if code, body := a.call("POST", "/terminate_instance", map[string]any{"instance_id": id, "timeout_seconds": 1}); code != http.StatusOK {
		t.Fatalf("terminate: %d %v", code, body)
	}
	selftestInContainer(t, payload)
	if ls := run(t, "ctr", "--address", sock, "-n", "rentals", "containers", "ls", "-q"); strings.Contains(ls, id) {
		t.Fatalf("terminated rental still on containerd:\n%s", ls)
	}
}

// portAnswers checks that a user, in a namespace of the test's own on
// subnet.0/24, reaches the rental's published port on the host's address,
// and that the rental sees that port as HOST_PORT_TCP_8080.
func portAnswers(t *testing.T, subnet string, hostPort int) {
	t.Helper()
	user := testenv.AddPeer(t, "user", subnet+".1", subnet+".2", 24)
	testenv.MustRouteInto(t, user.Host, user.HostIf)
	want := fmt.Sprintf("HOST_PORT_TCP_8080=%d ", hostPort)
	var got string
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && !strings.Contains(got, want); time.Sleep(200 * time.Millisecond) {
		got, err = testenv.Greeting(t, user.NS, "tcp", user.Host, hostPort)
	}
	if !strings.Contains(got, want) {
		t.Fatalf("the rental's published port %d from a user's namespace: %q, %v; want %q", hostPort, got, err, want)
	}
}

// selftestInContainer runs the self-test as the README says
// (docker exec host-agent host-agent selftest), with probes into the
// test's own namespaces: its test rentals run on the host's containerd, and
// from the rentals' network the "internet" answers and the LAN does not.
func selftestInContainer(t *testing.T, payload string) {
	t.Helper()
	inet := testenv.AddPeer(t, "internet", "198.18.9.1", "198.18.9.2", 24)
	lan := testenv.AddPeer(t, "lan", "10.217.9.1", "10.217.9.2", 24)
	for _, p := range []*testenv.Peer{inet, lan} {
		testenv.ServeIn(t, p.NS, "0.0.0.0:7000", p.Name)
		testenv.MustRouteInto(t, p.Addr, p.HostIf)
	}
	out, _ := exec.Command("docker", "exec",
		"-e", "SELFTEST_IMAGE="+payload,
		"-e", "SELFTEST_EGRESS_PROBE="+inet.Addr.String()+":7000",
		"-e", "SELFTEST_BLOCKED_PROBE="+lan.Addr.String()+":7000",
		"host-agent", "host-agent", "selftest", "--json").Output()
	var rep struct {
		Results []struct{ Name, Status, Detail string }
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("docker exec host-agent host-agent selftest --json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, r := range rep.Results {
		got[r.Name] = r.Status + ": " + r.Detail
	}
	for _, name := range []string{"runtime", "test-rental", "rental-network"} {
		if !strings.HasPrefix(got[name], "ok: ") {
			t.Errorf("self-test in the agent's container: %s is %q, want ok\n%s", name, got[name], out)
		}
	}
	if !strings.Contains(got["rental-network"], "reached "+inet.Addr.String()) {
		t.Errorf("rental-network: %q, want the internet peer reached", got["rental-network"])
	}
}

// publishedPort is the host port a start answer gives the rental's one
// published port.
func publishedPort(t *testing.T, body map[string]any) int {
	t.Helper()
	ports, _ := body["ports"].([]any)
	if len(ports) != 1 {
		t.Fatalf("start answer has ports %v, want one", body["ports"])
	}
	p, _ := ports[0].(map[string]any)["host_port"].(float64)
	if p == 0 {
		t.Fatalf("start answer has no host port: %v", body["ports"])
	}
	return int(p)
}

// agent is the containerized agent a README block started.
type agent struct {
	t     *testing.T
	base  string
	token string
}

// deploy runs a README block, adapted to this run, and waits until the
// containerized agent is ready. The container is removed at the end.
func deploy(t *testing.T, block, hostSocket, sock, image string) *agent {
	t.Helper()
	listen := testenv.AgentAddr(t)
	script := adapt(t, block, hostSocket, sock, image, listen)
	t.Logf("running the README's block:\n%s", script)
	_ = exec.Command("docker", "rm", "-f", "host-agent").Run()
	run(t, "bash", "-euo", "pipefail", "-c", script)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", "--tail", "100", "host-agent").CombinedOutput()
			t.Logf("agent's log:\n%s", out)
		}
		_ = exec.Command("docker", "rm", "-f", "host-agent").Run()
	})
	tokenBytes, err := os.ReadFile("/var/lib/host-agent/token")
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{t: t, base: "http://" + listen, token: strings.TrimSpace(string(tokenBytes))}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(a.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return a
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the containerized agent is not ready: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// call sends an authenticated request and decodes the JSON answer (the raw
// body under "_raw").
func (a *agent) call(method, path string, body any) (int, map[string]any) {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := map[string]any{"_raw": string(raw)}
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// logsShow waits until the instance's log, read through the agent, holds
// want.
func (a *agent) logsShow(id, want string) bool {
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if _, lb := a.call("GET", "/instances/"+id+"/logs?tail=10", nil); strings.Contains(fmt.Sprint(lb["_raw"]), want) {
			return true
		}
	}
	return false
}

// hostRuntimeFile is where the README's run lines have the agent record
// the runtime its rentals run on (STATE_DIR/runtime).
const hostRuntimeFile = "/var/lib/host-agent/runtime"

// newHost makes the state directory the README's lines mount that of a
// host whose agent has run on no runtime yet, before and after the test:
// each test stands for a host of its own (one with containerd, one with
// Docker only), and an agent does not leave the runtime recorded there
// while it cannot ask it about its rentals (README: remove the file when
// the old runtime is gone).
func newHost(t *testing.T) {
	t.Helper()
	forget := func() error {
		if err := os.Remove(hostRuntimeFile); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	}
	if err := forget(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := forget(); err != nil {
			t.Error(err)
		}
	})
}

// TestImageOnDockerOnly runs the README's Docker-only line: the agent's
// container gets the Docker socket and nothing of containerd, picks the
// Docker back end by itself, and a rental started through it is a
// container of the same daemon, listed by its label, with its logs
// readable through the API and its published port answering a user, and
// gone after the terminate.
func TestImageOnDockerOnly(t *testing.T) {
	image, dockerHost := os.Getenv("HOST_AGENT_IMAGE"), os.Getenv("DOCKER_HOST")
	sock, ok := strings.CutPrefix(dockerHost, "unix://")
	if image == "" || !ok {
		t.Skip("run by deploy/image-test.sh, which builds the image on a private dockerd (needs HOST_AGENT_IMAGE and a unix:// DOCKER_HOST)")
	}
	testenv.Require(t, "docker")

	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	payload, err := reg.PushPayload("payload:image-test-docker")
	if err != nil {
		t.Fatal(err)
	}
	// Once the agent is gone, its network and rules go as the README says,
	// so that nothing of this run stays on the host.
	removal := readmeBlock(t, "remove-docker-network")
	t.Cleanup(func() {
		if out, err := exec.Command("bash", "-c", removal).CombinedOutput(); err != nil {
			t.Logf("removing the Docker network: %v\n%s", err, out)
		}
	})
	newHost(t)
	a := deploy(t, readmeBlock(t, "docker-run-docker"), "/var/run/docker.sock", sock, image)
	if code, body := a.call("GET", "/readyz", nil); code != http.StatusOK || body["runtime"] != "docker" {
		t.Fatalf("GET /readyz: the agent did not pick Docker: %d %v", code, body)
	}

	id := fmt.Sprintf("image-test-docker-%d", time.Now().UnixNano())
	code, body := a.call("POST", "/start_instance", map[string]any{
		"instance_id": id, "image": payload, "command": []string{"echo", "hello from the host's dockerd", "cat", "/root/.ssh/authorized_keys", "serve", "8080", "sleep", "inf"},
		"ports":               []map[string]any{{"container_port": 8080}},
		"ssh_authorized_keys": []string{tenantKey},
	})
	if code != http.StatusOK || body["status"] != "running" {
		t.Fatalf("start through the containerized agent on Docker: %d %v", code, body)
	}
	hostPort := publishedPort(t, body)
	t.Cleanup(func() { a.call("POST", "/terminate_instance", map[string]any{"instance_id": id, "timeout_seconds": 1}) })

	filter := "label=host-agent.io/instance-id=" + id
	if ps := run(t, "docker", "ps", "--filter", filter, "--format", "{{.Names}} {{.State}}"); !strings.Contains(ps, "rental-"+id+" running") {
		t.Fatalf("docker ps --filter %s does not show the rental running:\n%s", filter, ps)
	}
	if !a.logsShow(id, tenantKey) {
		t.Fatal("the tenant's SSH key is not in the rental: the daemon mounts it from STATE_DIR on the host")
	}
	if !a.logsShow(id, "hello from the host's dockerd") {
		t.Fatal("the rental's log is not readable through the containerized agent")
	}
	portAnswers(t, "198.18.8", hostPort)
	if code, body := a.call("POST", "/terminate_instance", map[string]any{"instance_id": id, "timeout_seconds": 1}); code != http.StatusOK {
		t.Fatalf("terminate: %d %v", code, body)
	}
	if ps := run(t, "docker", "ps", "-a", "-q", "--filter", filter); strings.TrimSpace(ps) != "" {
		t.Fatalf("terminated rental still on dockerd: %s", ps)
	}
}
