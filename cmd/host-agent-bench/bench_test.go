package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	res, err := run(context.Background(), config{Runs: 2, Instances: 3, Requests: 10, Bursts: []int{3}, Cycles: 8, Parallel: 2, NetRuns: 2})
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
	var table bytes.Buffer
	res.printTable(&table)
	if !strings.Contains(table.String(), "start_agent_over_ctr") || !strings.Contains(table.String(), "start_agent_over_ctr-cni") {
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
