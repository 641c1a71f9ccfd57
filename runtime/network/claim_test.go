package network

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime/hostport"
)

func mustRange(t *testing.T, s string) hostport.Range {
	t.Helper()
	r, err := hostport.ParseRange(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A second agent on the host whose port range overlaps a running agent's
// is refused, naming both ranges; one of the same network (a restart), one
// with a range apart, and one after the first has gone are not.
func TestClaimPortRange(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	release, err := ClaimPortRange(dir, "host-agent", mustRange(t, "40000-40999"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ClaimPortRange(dir, "host-agent-b", mustRange(t, "40900-41999")); !errors.Is(err, ErrPortRangeOverlap) ||
		!strings.Contains(err.Error(), "40900-41999 overlaps 40000-40999") || !strings.Contains(err.Error(), "host-agent ") {
		t.Fatalf("an overlapping range of another network: %v", err)
	}
	relB, err := ClaimPortRange(dir, "host-agent-b", mustRange(t, "41000-41999"))
	if err != nil {
		t.Fatalf("a range apart: %v", err)
	}
	defer relB()
	if _, err := ClaimPortRange(dir, "host-agent", mustRange(t, "40000-40999")); !errors.Is(err, ErrNetworkInUse) {
		t.Fatal("a second agent of the same network while the first runs was let in")
	}
	release()
	// The first agent has gone: its range is free.
	relC, err := ClaimPortRange(dir, "host-agent-c", mustRange(t, "40000-40999"))
	if err != nil {
		t.Fatalf("after the first agent released its claim: %v", err)
	}
	relC()
}

// A claim left by an agent that died without releasing it (the file is
// there, its lock is not) does not stop another agent.
func TestClaimOfDeadAgentIgnored(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	release, err := ClaimPortRange(dir, "host-agent", mustRange(t, "40000-40999"))
	if err != nil {
		t.Fatal(err)
	}
	c, live, err := readClaim(filepath.Join(dir, "host-agent.json"))
	if err != nil || !live || c.PortRange != "40000-40999" {
		t.Fatalf("claim while held: %+v live=%v %v", c, live, err)
	}
	release()
	// As a crash leaves it: the file is there, the lock went with the
	// process.
	if err := os.WriteFile(filepath.Join(dir, "host-agent.json"), []byte(`{"network":"host-agent","host_port_range":"40000-40999","pid":1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	rel, err := ClaimPortRange(dir, "host-agent-b", mustRange(t, "40000-40999"))
	if err != nil {
		t.Fatalf("a dead agent's claim refused a start: %v", err)
	}
	defer rel()
	if _, err := os.Stat(filepath.Join(dir, "host-agent.json")); !os.IsNotExist(err) {
		t.Errorf("the dead agent's claim is still there: %v", err)
	}
}
