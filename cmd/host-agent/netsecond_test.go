package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
)

// A second agent on the host (its own RENTAL_NETWORK_NAME and containerd
// namespace, the same STATE_DIR): on the default port range, which the
// first agent hands out from too, it refuses to start naming
// HOST_PORT_RANGE; on a range of its own it starts, and its sweep at start
// leaves the first agent's rental, its journal and files alone.
func TestSecondAgentOnTheHost(t *testing.T) {
	w := newWorld(t)
	user := testenv.AddPeer(t, "user", "198.18.5.1", "198.18.5.2", 24)
	first := startAgent(t, w.bin, w.env, w.agentLog)
	ports := mustStart(t, first, servingStart("first-1", w.image, 8080))
	if !answers(t, user, ports["tcp/8080"]) {
		t.Fatal("the first agent's rental does not answer")
	}
	state := strings.TrimPrefix(w.env[slices.IndexFunc(w.env, func(e string) bool { return strings.HasPrefix(e, "STATE_DIR=") })], "STATE_DIR=")
	journal := filepath.Join(w.net.cfg.StateDir, "attachments", "first-1.json")
	files := filepath.Join(w.net.cfg.StateDir, "files", "first-1")
	for _, p := range []string{journal, files} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the first agent's network state: %v", err)
		}
	}

	var second *testNetwork
	for second == nil || second.subnet == w.net.subnet {
		second = anotherTestNetwork(t, state)
	}
	env := append([]string{"AGENT_ID=e2e-second", "AGENT_TOKEN=" + e2eToken, "CONTAINERD_ADDRESS=" + w.ctd.Address,
		"STATE_DIR=" + state, "CONTAINERD_NAMESPACE=rentals-second"}, second.env()...)

	// On the default range: refused.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.bin)
	cmd.Env = append(append([]string{"PATH=" + os.Getenv("PATH")}, env...), "LISTEN_ADDR="+freeAddr(t))
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "HOST_PORT_RANGE") || !strings.Contains(string(out), w.net.cfg.NetworkName) {
		t.Fatalf("a second agent on an overlapping range: %v\n%s", err, out)
	}

	// On a range of its own: it starts and leaves the first one's rental
	// alone.
	secondLog := filepath.Join(t.TempDir(), "second.log")
	other := startAgent(t, w.bin, append(env, "HOST_PORT_RANGE=46300-46399"), secondLog)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(secondLog)
			t.Logf("second agent's log:\n%s", b)
		}
	})
	otherPorts := mustStart(t, other, servingStart("second-1", w.image, 8080))
	if p := otherPorts["tcp/8080"]; p < 46300 || p > 46399 {
		t.Fatalf("the second agent handed out port %d, outside its range", p)
	}
	for _, p := range []string{journal, files} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("the second agent's start removed the first one's network state: %v", err)
		}
	}
	if !answers(t, user, ports["tcp/8080"]) {
		t.Error("the first agent's rental stopped answering after the second agent's start")
	}
	if !answers(t, user, otherPorts["tcp/8080"]) {
		t.Error("the second agent's rental does not answer")
	}
	if code, body := first.call("GET", "/instances/first-1", nil); code != http.StatusOK {
		t.Errorf("the first agent's rental after the second's start: %d %v", code, body)
	}
	mustTerminate(t, other, "second-1")
	mustTerminate(t, first, "first-1")
}
