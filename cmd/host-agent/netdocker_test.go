package main

import (
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// On Docker as on containerd, GET /host reports the rentals' network and
// /readyz checks it: with the jump from DOCKER-USER to the agent's chain
// deleted, /readyz answers 503 naming the rules, and 200 once the jump is
// back. (The recheck interval is long, so that the agent does not repair
// the jump itself while the test looks.)
func TestDockerNetworkReportedAndChecked(t *testing.T) {
	dw := newDockerWorld(t)
	a := startAgent(t, dw.bin, append(dw.env(false, true), "NETWORK_RECHECK_INTERVAL=10m"), dw.agentLog)
	assertRuntime(t, a, "docker")

	code, host := a.call("GET", "/host", nil)
	n, _ := host["network"].(map[string]any)
	if code != http.StatusOK || n == nil || n["subnet"] != dw.net.subnet.String() || n["bridge"] != dw.bridge ||
		n["port_range"] != hostport.DefaultRange.String() || n["ports_free"] != float64(hostport.DefaultRange.Size()) || n["dns"] == nil {
		t.Errorf("GET /host network on Docker: %d %v", code, host["network"])
	}
	if code, body := readyzBecomes(a, http.StatusOK); code != http.StatusOK {
		t.Fatalf("readyz on Docker: %d %v", code, body)
	}

	chain := dockerNetwork(config{Network: netConfig{Name: dw.net.name}}).ChainPrefix + "-DFWD"
	iptables := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("iptables %v: %v: %s", args, err, out)
		}
	}
	iptables("-D", "DOCKER-USER", "-j", chain)
	if code, body := readyzBecomes(a, http.StatusServiceUnavailable); code != http.StatusServiceUnavailable ||
		!strings.Contains(fmt.Sprint(body["error"]), "iptables") {
		t.Fatalf("readyz on Docker without the jump to %s: %d %v, want 503 naming the rules", chain, code, body)
	}
	iptables("-I", "DOCKER-USER", "1", "-j", chain)
	if code, body := readyzBecomes(a, http.StatusOK); code != http.StatusOK {
		t.Fatalf("readyz on Docker with the jump back: %d %v", code, body)
	}
}
