package main

import (
	"context"
	"net/http"
	"syscall"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
)

// TestDrainSurvivesRestart drains the real agent on a real containerd: a
// new start is refused with 503 "draining" while a running rental stays,
// the state outlives the agent (it is kept on containerd's namespace, as
// ctr shows it), and after undrain starts work again.
func TestDrainSurvivesRestart(t *testing.T) {
	w := newWorld(t)
	agent := startAgent(t, w.bin, w.env, w.agentLog)
	start := func(a *agentProc, id string) (int, map[string]any) {
		return a.call("POST", "/start_instance", map[string]any{"instance_id": id, "image": w.image, "command": []string{"sleep", "inf"}})
	}
	if code, body := start(agent, "before-drain"); code != http.StatusOK {
		t.Fatalf("start before drain: %d %v", code, body)
	}
	if code, body := agent.call("POST", "/drain", map[string]any{"reason": "maintenance window"}); code != http.StatusOK || body["draining"] != true || body["reason"] != "maintenance window" || body["since"] == nil {
		t.Fatalf("drain: %d %v", code, body)
	}
	code, body := start(agent, "during-drain")
	if code != http.StatusServiceUnavailable || body["code"] != "draining" {
		t.Fatalf("start during drain: %d %v, want 503 code draining", code, body)
	}
	// The retry of a start made before the drain still answers it.
	if code, body := start(agent, "before-drain"); code != http.StatusOK || body["status"] != "running" {
		t.Fatalf("retried start of an existing rental during drain: %d %v", code, body)
	}

	// Kept on containerd, where an operator sees it.
	cl, err := containerd.New(w.ctd.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	labels, err := cl.NamespaceService().Labels(context.Background(), "rentals")
	if err != nil || labels["host-agent.io/drain-reason"] != "maintenance window" {
		t.Fatalf("namespace labels = %v, %v", labels, err)
	}

	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	<-agent.done
	agent = startAgent(t, w.bin, w.env, w.agentLog)

	if code, body := agent.call("GET", "/readyz", nil); code != http.StatusOK || drainOf(body)["draining"] != true || drainOf(body)["reason"] != "maintenance window" {
		t.Fatalf("readyz after restart: %d %v", code, body)
	}
	if code, body := agent.call("GET", "/host", nil); code != http.StatusOK || drainOf(body)["reason"] != "maintenance window" {
		t.Fatalf("host report after restart: %d %v", code, body)
	}
	if code, body := start(agent, "during-drain"); code != http.StatusServiceUnavailable || body["code"] != "draining" {
		t.Fatalf("start during drain after restart: %d %v", code, body)
	}
	if code, body := agent.call("GET", "/instances/before-drain", nil); code != http.StatusOK || body["status"] != "running" {
		t.Fatalf("rental during drain: %d %v", code, body)
	}

	if code, body := agent.call("POST", "/undrain", nil); code != http.StatusOK || body["draining"] != false {
		t.Fatalf("undrain: %d %v", code, body)
	}
	if code, body := start(agent, "after-undrain"); code != http.StatusOK {
		t.Fatalf("start after undrain: %d %v", code, body)
	}
	if code, body := agent.call("GET", "/readyz", nil); code != http.StatusOK || drainOf(body)["draining"] != false {
		t.Fatalf("readyz after undrain: %d %v", code, body)
	}
	if code, body := agent.call("GET", "/host", nil); code != http.StatusOK || body["drain"] != nil {
		t.Fatalf("host report after undrain still drained: %v", body)
	}
}

func drainOf(body map[string]any) map[string]any {
	d, _ := body["drain"].(map[string]any)
	return d
}
