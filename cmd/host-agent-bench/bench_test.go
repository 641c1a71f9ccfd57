package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime/testenv"
)

// The bench command runs end to end with tiny counts: every side starts
// and terminates, every measure is filled in, and the JSON reads back.
// The numbers themselves are not judged.
func TestBenchSmoke(t *testing.T) {
	testenv.Require(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr")
	res, err := run(context.Background(), config{Runs: 2, Instances: 3, Requests: 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{sideAgent, sideCtr, sideClient} {
		if res.Start[name].N != 2 || res.Terminate[name].N != 2 || res.Start[name].Median <= 0 {
			t.Errorf("%s: start %+v terminate %+v", name, res.Start[name], res.Terminate[name])
		}
	}
	if len(res.Ratios) != 4 || res.List.Requests != 10 || res.List.Instances != 3 || res.List.Bytes == 0 {
		t.Errorf("ratios %v, list %+v", res.Ratios, res.List)
	}
	var table bytes.Buffer
	res.printTable(&table)
	if !strings.Contains(table.String(), "start_agent_over_ctr") {
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
