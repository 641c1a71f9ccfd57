package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"syscall"
	"testing"

	ctdclient "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/host-agent/host-agent/gpu/gpumock"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/server/reporter"
)

func TestMIGRentalsConfig(t *testing.T) {
	t.Parallel()
	env := map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken}
	if cfg, err := loadConfig(envOf(env), ""); err != nil || cfg.MIGRentals {
		t.Fatalf("default: MIGRentals %v, %v", cfg.MIGRentals, err)
	}
	env["MIG_RENTALS"] = "true"
	if cfg, err := loadConfig(envOf(env), ""); err != nil || !cfg.MIGRentals {
		t.Fatalf("MIG_RENTALS=true: %v, %v", cfg.MIGRentals, err)
	}
	env["MIG_RENTALS"] = "yes"
	if _, err := loadConfig(envOf(env), ""); err == nil || !strings.Contains(err.Error(), "MIG_RENTALS") {
		t.Errorf("MIG_RENTALS=yes: %v, want an error naming MIG_RENTALS", err)
	}
}

// TestAgentGPUMockMIGEndToEnd runs the built agent with
// GPU_MOCK=dgxh100-mig and MIG_RENTALS=true: GET /gpus lists the MIG
// devices, a start with mig_profile gets one with exactly its parent's
// stand-in node and its own nvidia-caps nodes in the OCI spec and in the
// container, a second start of a profile none of which is left is a 409, a
// bad profile a 400 naming mig_profile; registration lists the MIG devices
// and heartbeats count the free ones per profile; the holding survives an
// agent restart, and terminating frees the MIG device.
func TestAgentGPUMockMIGEndToEnd(t *testing.T) {
	w := newWorld(t)
	central := &centralServer{answer: `{}`}
	srv := httptest.NewServer(central)
	t.Cleanup(srv.Close)
	env := append(slices.Clone(w.env), "GPU_MOCK="+gpumock.DGXH100MIG, "MIG_RENTALS=true",
		"API_SERVER_URL="+srv.URL, "HEARTBEAT_INTERVAL=1s", "API_SERVER_TOKEN=central-token-0123456789abcdef")
	agent := startAgent(t, w.bin, env, w.agentLog)
	evs := agent.eventStream("")
	central.waitFor(t, "a registration with the MIG devices", func(c *centralServer) bool {
		return len(c.registers) > 0 && len(c.registers[0].Host.MIGDevices) == 11
	})

	code, body := agent.call("GET", "/gpus", nil)
	migs, _ := body["mig_devices"].([]any)
	if code != http.StatusOK || len(migs) != 11 {
		t.Fatalf("GET /gpus: %d, %d MIG devices: %v", code, len(migs), body["mig_devices"])
	}
	var big map[string]any // the one 3g.40gb
	for _, m := range migs {
		if mm := m.(map[string]any); mm["profile"] == "3g.40gb" {
			big = mm
		}
	}
	if big == nil || big["parent_index"] != float64(0) || !strings.HasPrefix(big["uuid"].(string), "MIG-") {
		t.Fatalf("3g.40gb MIG device: %v", big)
	}

	if code, body := agent.call("POST", "/start_instance", map[string]any{
		"instance_id": "mig-bad", "image": w.image, "mig_profile": "40gb",
	}); code != http.StatusBadRequest || body["field"] != "mig_profile" {
		t.Fatalf("start with a bad mig_profile: %d %v", code, body)
	}

	code, body = agent.call("POST", "/start_instance", map[string]any{
		"instance_id": "mig-a", "image": w.image, "mig_profile": "3g.40gb",
		"command": []string{"ls", "/dev", "ls", "/dev/nvidia-caps", "echo", "listed", "sleep", "inf"},
	})
	if code != http.StatusOK {
		t.Fatalf("start with mig_profile 3g.40gb: %d %v", code, body)
	}
	await(t, evs, "mig-a", events.TypeInstanceRunning)
	code, body = agent.call("GET", "/instances/mig-a", nil)
	held, _ := body["gpus"].([]any)
	if code != http.StatusOK || len(held) != 1 || held[0].(map[string]any)["uuid"] != big["uuid"] {
		t.Fatalf("GET /instances/mig-a: %d %v, want %v", code, body, big["uuid"])
	}
	if h := migHolder(agent, big["uuid"].(string)); h != "mig-a" {
		t.Errorf("GET /gpus: 3g.40gb held by %q", h)
	}
	central.waitFor(t, "a heartbeat with no 3g.40gb free", func(c *centralServer) bool {
		return lastHeartbeatWith(c, 0, func(hb reporter.HeartbeatRequest) bool {
			return hasInstance(hb, "mig-a", "running") && hb.MIGFree["3g.40gb"] == 0 && hb.MIGFree["1g.10gb"] == 9 && hb.MIGFree["2g.20gb"] == 1
		})
	})

	// The OCI spec containerd runs holds the parent's node and the MIG
	// device's two access nodes, no other GPU's or MIG device's.
	gi, ci := gpumock.CapMinors(0, int(big["gpu_instance_id"].(float64)), int(big["compute_instance_id"].(float64)))
	wantSpec := []string{"/dev/nvidia-caps/" + fmt.Sprintf("nvidia-cap%d", gi), "/dev/nvidia-caps/" + fmt.Sprintf("nvidia-cap%d", ci), "/dev/nvidia0"}
	if got := nvidiaDevices(t, w.ctd.Address, "mig-a"); !slices.Equal(got, wantSpec) {
		t.Errorf("OCI spec devices %v, want %v", got, wantSpec)
	}
	out := agent.waitLog("mig-a", "listed")
	var seen []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "nvidia") {
			seen = append(seen, line)
		}
	}
	slices.Sort(seen)
	if want := []string{"nvidia-cap" + fmt.Sprint(gi), "nvidia-cap" + fmt.Sprint(ci), "nvidia-caps", "nvidia0"}; !slices.Equal(seen, want) {
		t.Errorf("container sees %v, want %v; output:\n%s", seen, want, out)
	}

	if code, body := agent.call("POST", "/start_instance", map[string]any{
		"instance_id": "mig-b", "image": w.image, "mig_profile": "3g.40gb",
	}); code != http.StatusConflict || !strings.Contains(fmt.Sprint(body["error"]), "none free") {
		t.Fatalf("second 3g.40gb: %d %v, want 409", code, body)
	}

	// The agent restarts: the holding is read back from the labels.
	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	<-agent.done
	agent = startAgent(t, w.bin, env, w.agentLog)
	if h := migHolder(agent, big["uuid"].(string)); h != "mig-a" {
		t.Fatalf("after restart 3g.40gb held by %q, want mig-a", h)
	}
	if code, body := agent.call("POST", "/start_instance", map[string]any{
		"instance_id": "mig-b", "image": w.image, "gpus": []string{big["uuid"].(string)},
	}); code != http.StatusConflict {
		t.Fatalf("3g.40gb by UUID after restart: %d %v, want 409", code, body)
	}

	if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "mig-a"}); code != http.StatusOK {
		t.Fatalf("terminate: %d %v", code, body)
	}
	if h := migHolder(agent, big["uuid"].(string)); h != "" {
		t.Errorf("after terminate 3g.40gb held by %q", h)
	}
	if code, body := agent.call("POST", "/start_instance", map[string]any{
		"instance_id": "mig-b", "image": w.image, "mig_profile": "3g.40gb", "command": []string{"sleep", "inf"},
	}); code != http.StatusOK {
		t.Fatalf("3g.40gb after terminate: %d %v", code, body)
	}
	if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "mig-b"}); code != http.StatusOK {
		t.Fatalf("terminate mig-b: %d %v", code, body)
	}
}

func migHolder(a *agentProc, uuid string) string {
	a.t.Helper()
	_, body := a.call("GET", "/gpus", nil)
	migs, _ := body["mig_devices"].([]any)
	for _, m := range migs {
		if mm := m.(map[string]any); mm["uuid"] == uuid {
			return mm["held_by"].(string)
		}
	}
	return "?"
}

// nvidiaDevices lists the /dev/nvidia* device nodes of an instance's OCI
// spec, sorted.
func nvidiaDevices(t *testing.T, addr, id string) []string {
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
	s, err := c.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	if s.Linux != nil {
		for _, d := range s.Linux.Devices {
			if strings.HasPrefix(d.Path, "/dev/nvidia") {
				out = append(out, d.Path)
			}
		}
	}
	slices.Sort(out)
	return out
}
