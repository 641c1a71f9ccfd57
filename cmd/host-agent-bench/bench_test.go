package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
)

func TestMain(m *testing.M) {
	if isChild() {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// The bench command runs end to end with tiny counts: every side starts
// and terminates, every measure is filled in, and the JSON reads back.
// The numbers themselves are not judged.
func TestBenchSmoke(t *testing.T) {
	testenv.Require(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "nft", "iptables-restore")
	// The networked phase makes bridges and iptables rules on the host.
	testenv.LockHostNetwork(t)
	res, err := run(context.Background(), config{Runs: 2, Instances: 3, Requests: 10, Bursts: []int{3}, Cycles: 8, Parallel: 2, NetRuns: 2,
		Big: bigConfig{Rounds: 1, Layers: 2, LayerMB: 1, RateMBps: 25, FirstByte: 40 * time.Millisecond, PrePulledRuns: 2}})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{sideAgent, sideCtr, sideClient} {
		if res.Start[name].N != 2 || res.Terminate[name].N != 2 || res.Start[name].Median <= 0 {
			t.Errorf("%s: start %+v terminate %+v", name, res.Start[name], res.Terminate[name])
		}
	}
	if len(res.Concurrent) != 4 {
		t.Errorf("concurrent starts: %+v", res.Concurrent)
	}
	for _, c := range res.Concurrent {
		if c.Starts != 3 || c.Failures != 0 || c.TerminateFailures != 0 || c.WallMS <= 0 {
			t.Errorf("burst %+v", c)
		}
	}
	f := res.Footprint
	if res.ExitToWS.N != 2 || res.ExitToWS.Median <= 0 || f.IdleRSSMB <= 0 || f.AfterCyclesRSSMB <= 0 || f.Cycles != 8 ||
		f.CycleFailures != 0 || f.IdleGoroutines <= 0 || f.AfterCyclesGorout <= 0 {
		t.Errorf("exit latency %+v, footprint %+v", res.ExitToWS, f)
	}
	for _, side := range []string{sideAgent, sideClient} {
		if c := res.Calls[side]["tasks.v1.Tasks/Create"]; c.Calls < 1 || c.MS <= 0 {
			t.Errorf("%s: containerd calls %v", side, res.Calls[side])
		}
	}
	if res.Heartbeat.GPUs != 8 || res.Heartbeat.Instances != 3 || res.Heartbeat.Bytes == 0 {
		t.Errorf("heartbeat %+v", res.Heartbeat)
	}
	if len(res.Ratios) != 6 || res.List.Requests != 10 || res.List.Instances != 3 || res.List.Bytes == 0 {
		t.Errorf("ratios %v, list %+v", res.Ratios, res.List)
	}
	if n := res.Networked; n == nil {
		t.Error("no networked phase")
	} else {
		for _, name := range []string{sideAgentNet, sideCtrCNI, sideClientCNI} {
			if n.Start[name].N != 2 || n.Terminate[name].N != 2 || n.Start[name].Median <= 0 {
				t.Errorf("networked %s: start %+v terminate %+v", name, n.Start[name], n.Terminate[name])
			}
		}
		if len(n.Ratios) != 4 {
			t.Errorf("networked ratios %v", n.Ratios)
		}
		for _, name := range []string{sideAgentNet, sideCtrCNI, sideClientCNI} {
			if n.Ports[name] != 1 {
				t.Errorf("%s: %d bridge ports with one rental started, want 1 (its veth)", name, n.Ports[name])
			}
		}
	}
	checkBig(t, res.BigImage)
	var table bytes.Buffer
	res.printTable(&table)
	if !strings.Contains(table.String(), "start_agent_over_ctr") || !strings.Contains(table.String(), "start_agent_over_ctr-cni") ||
		!strings.Contains(table.String(), "cold start ctr-local") || !strings.Contains(table.String(), "cold start docker") {
		t.Errorf("table:\n%s", table.String())
	}
	path := filepath.Join(t.TempDir(), "bench.json")
	if err := res.writeJSON(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(b, &back); err != nil || back.Start[sideAgent] != res.Start[sideAgent] {
		t.Fatalf("JSON round trip: %v %+v", err, back.Start)
	}
}

// checkBig checks the big-image phase of a smoke run: every side started
// the cold image, the pre-pulled and small images started, and the
// registry served each blob once while a start raced a pre-pull.
func checkBig(t *testing.T, b *BigImage) {
	t.Helper()
	if b == nil {
		t.Fatal("no big-image results")
	}
	for _, side := range bigSides {
		if why, ok := b.Skipped[side]; ok && side == bigDocker {
			// Left out only when the moby dockerd is not built; CI
			// builds it and requires the side.
			if os.Getenv(testenv.RequireEnv) == "require" {
				t.Errorf("the %s side was left out under %s=require: %s", side, testenv.RequireEnv, why)
			} else {
				t.Logf("the %s side was left out: %s", side, why)
			}
			continue
		}
		if s := b.ColdStart[side]; s.N != 1 || s.Median <= 0 {
			t.Errorf("cold start %s: %+v", side, s)
		}
	}
	if b.PrePulledStart.N != 2 || b.SmallStart.N != 2 || b.Ratios["prepulled_start_over_small"] <= 0 || b.Ratios["cold_start_agent_over_ctr"] <= 0 {
		t.Errorf("pre-pulled %+v small %+v ratios %v", b.PrePulledStart, b.SmallStart, b.Ratios)
	}
	if _, skipped := b.Skipped[bigDocker]; !skipped && b.Ratios["cold_start_agent_over_docker"] <= 0 {
		t.Errorf("no agent/docker ratio: %v", b.Ratios)
	}
	// The config and three layers (two random, the payload's).
	if len(b.Race) != 4 || b.ImageMB < 2 {
		t.Errorf("blobs served during the race: %+v (image %.1f MiB)", b.Race, b.ImageMB)
	}
	for _, s := range b.Race {
		if s.Fetches != 1 || s.BytesSent != s.Size || s.Size == 0 {
			t.Errorf("blob %s served %d times, %d bytes of %d; want once, whole", s.Digest, s.Fetches, s.BytesSent, s.Size)
		}
	}
}
