package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
)

// TestRuntimeAutoPicksEachBackEnd runs the built agent with RUNTIME unset
// (auto) three times: with containerd answering it takes containerd; with
// only Docker answering it takes Docker and runs a rental there, labelled
// as on containerd; with neither it says so and /readyz answers 503.
func TestRuntimeAutoPicksEachBackEnd(t *testing.T) {
	w := newWorld(t)
	bin := testenv.DebianDockerd()
	if bin == "" {
		testenv.Require(t, "dockerd")
		bin = "dockerd"
	}
	dir, err := os.MkdirTemp("", "ha-ag-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d, err := testenv.StartDockerd(dir, testenv.DockerdOptions{Bin: bin, Containerd: w.ctd.Address})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	// The rentals' network under the test's names: where a dockerd manages
	// iptables (DOCKER-USER exists), the agent on Docker makes its Docker
	// network, whose bridge would outlive the daemon.
	removeDockerNetwork(t, d, w)
	base := append([]string{"AGENT_ID=e2e-host", "AGENT_TOKEN=" + e2eToken, "DOCKER_HOST=" + d.Host}, w.net.env()...)

	t.Run("containerd", func(t *testing.T) {
		a := startAgent(t, w.bin, append(base, "CONTAINERD_ADDRESS="+w.ctd.Address, "STATE_DIR="+t.TempDir()), w.agentLog)
		assertRuntime(t, a, "containerd")
	})

	t.Run("docker", func(t *testing.T) {
		a := startAgent(t, w.bin, append(base, "CONTAINERD_ADDRESS="+filepath.Join(dir, "no-containerd.sock"), "STATE_DIR="+t.TempDir()), w.agentLog)
		assertRuntime(t, a, "docker")
		code, body := a.call("POST", "/start_instance", map[string]any{
			"instance_id": "auto-docker", "image": w.image, "command": []string{"sleep", "inf"},
		})
		if code != http.StatusOK || body["message"] != "Instance started successfully" {
			t.Fatalf("start on Docker: %d %v", code, body)
		}
		// An operator's `docker ps --filter label=host-agent.io/instance-id`.
		cl, err := client.New(client.WithHost(d.Host), client.WithAPIVersionNegotiation())
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		list, err := cl.ContainerList(context.Background(), client.ContainerListOptions{
			Filters: make(client.Filters).Add("label", runtime.LabelInstanceID)})
		if err != nil || len(list.Items) != 1 || list.Items[0].Labels[runtime.LabelInstanceID] != "auto-docker" ||
			list.Items[0].Labels[runtime.LabelAgentID] != "e2e-host" {
			t.Fatalf("docker ps --filter label: %+v %v", list.Items, err)
		}
		if code, body := a.call("POST", "/terminate_instance", map[string]any{"instance_id": "auto-docker"}); code != http.StatusOK {
			t.Fatalf("terminate on Docker: %d %v", code, body)
		}
	})

	t.Run("neither", func(t *testing.T) {
		addr := freeAddr(t)
		logPath := filepath.Join(t.TempDir(), "agent.log")
		logf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		cmd := exec.Command(w.bin)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "AGENT_ID=e2e-host", "AGENT_TOKEN=" + e2eToken, "LISTEN_ADDR=" + addr,
			"STATE_DIR=" + t.TempDir(), "CONTAINERD_ADDRESS=" + filepath.Join(dir, "no-containerd.sock"),
			"DOCKER_HOST=unix://" + filepath.Join(dir, "no-docker.sock")}
		cmd.Env = append(cmd.Env, w.net.env()...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = t.TempDir(), logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		var code int
		var body string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			resp, err := http.Get("http://" + addr + "/readyz")
			if err != nil {
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			code, body = resp.StatusCode, string(b)
			break
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "containerd unavailable") {
			t.Fatalf("readyz with neither runtime: %d %s", code, body)
		}
		logs, _ := os.ReadFile(logPath)
		if !strings.Contains(string(logs), "neither containerd") || !strings.Contains(string(logs), "nor Docker") {
			t.Fatalf("the agent does not say that neither runtime answers:\n%s", logs)
		}
	})
}

func assertRuntime(t *testing.T, a *agentProc, want string) {
	t.Helper()
	resp, err := http.Get(a.base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var ready struct{ Runtime string }
	_ = json.NewDecoder(resp.Body).Decode(&ready)
	resp.Body.Close()
	if ready.Runtime != want {
		t.Errorf("readyz runtime %q, want %q", ready.Runtime, want)
	}
	code, host := a.call("GET", "/host", nil)
	rt, _ := host["runtime"].(map[string]any)
	if code != http.StatusOK || rt["name"] != want {
		t.Errorf("GET /host runtime: %d %v, want %s", code, host["runtime"], want)
	}
}
