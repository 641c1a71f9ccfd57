// Command host-agent-bench measures the agent against containerd used
// directly, on one private containerd and one local image, in one run:
// rentals are started and terminated through the agent's HTTP API, with
// `ctr` (as an operator would) and with the containerd client and the same
// confinement, interleaved so that the machine's noise hits every side.
// It also measures bursts of concurrent starts (CPU-only and with mock
// GPUs) against the raw client, the exit-to-/ws event latency, the agent's
// memory and goroutines idle, with -instances rentals and after -cycles
// start/terminate cycles, GET /instances under load, and the heartbeat's
// size. The agent runs as a child process of this command. It prints a
// table and writes the numbers as JSON. Needs root, containerd,
// containerd-shim-runc-v2, runc and ctr on PATH.
//
//	host-agent-bench -runs 30 -instances 200 -cycles 1000 -json bench.json
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

func main() {
	if isChild() {
		os.Exit(childMain())
	}
	var cfg config
	var bursts string
	flag.IntVar(&cfg.Runs, "runs", 30, "start/terminate measurements per side")
	flag.IntVar(&cfg.Instances, "instances", 200, "instances running while GET /instances is measured")
	flag.IntVar(&cfg.Requests, "requests", 2000, "GET /instances requests")
	flag.StringVar(&bursts, "bursts", "50,200", "sizes of the concurrent start bursts, comma-separated")
	flag.IntVar(&cfg.Cycles, "cycles", 1000, "start/terminate cycles for the leak check (0: none)")
	flag.IntVar(&cfg.NetRuns, "net-runs", 30, "start/terminate measurements per side with a network on every side (0: none)")
	flag.IntVar(&cfg.Parallel, "parallel", 8, "cycles run at a time")
	flag.StringVar(&cfg.ProfileDir, "profile", "", "write the agent's CPU profiles (start/terminate runs, GET /instances load, CPU bursts) to this directory")
	flag.StringVar(&cfg.JSONPath, "json", "", "also write the results as JSON to this file")
	flag.Parse()
	if *lazyOnly {
		os.Exit(lazyMain())
	}
	for _, f := range strings.Split(bursts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "host-agent-bench: -bursts %q: want positive counts\n", bursts)
			os.Exit(2)
		}
		cfg.Bursts = append(cfg.Bursts, n)
	}
	res, err := run(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "host-agent-bench:", err)
		os.Exit(1)
	}
	res.printTable(os.Stdout)
	if cfg.JSONPath != "" {
		if err := res.writeJSON(cfg.JSONPath); err != nil {
			fmt.Fprintln(os.Stderr, "host-agent-bench:", err)
			os.Exit(1)
		}
	}
}
