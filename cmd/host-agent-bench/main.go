// Command host-agent-bench measures the agent against containerd used
// directly, on one private containerd and one local image, in one run:
// rentals are started and terminated through the agent's HTTP API, with
// `ctr` (as an operator would) and with the containerd client and the same
// confinement, interleaved so that the machine's noise hits every side.
// It also measures bursts of concurrent starts (CPU-only and with mock
// GPUs) against the raw client, the exit-to-/ws event latency, the agent's
// memory and goroutines idle, with -instances rentals and after -cycles
// start/terminate cycles, GET /instances under load, and the heartbeat's
// size. Its big-image phase starts a cold image of -big-layers layers of
// random data from a registry behind a CDN-like proxy through the agent,
// with ctr (the transfer service), with ctr --local (the client-side
// pull) and with `docker run -d` on the moby dockerd (on the same
// containerd; left out when that dockerd is not built), compares a pre-pulled image's start with a small image's, and
// counts what the registry serves while a start races a pre-pull
// (-big-only runs that phase alone). The agent runs as a child process of this command. It prints a
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
	"slices"
	"strconv"
	"strings"
	"time"
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
	flag.StringVar(&cfg.ProfileDir, "profile", "", "write the agent's CPU profiles (start/terminate runs, GET /instances load, CPU and GPU bursts) to this directory")
	flag.StringVar(&cfg.JSONPath, "json", "", "also write the results as JSON to this file")
	var bigSidesFlag string
	var firstByteMS int
	flag.IntVar(&cfg.Big.Rounds, "big-rounds", 5, "cold starts of the big image per side (0: no big-image phase)")
	flag.IntVar(&cfg.Big.Layers, "big-layers", 8, "random layers of the big image")
	flag.IntVar(&cfg.Big.LayerMB, "big-layer-mb", 256, "MiB of each random layer")
	flag.Float64Var(&cfg.Big.RateMBps, "big-rate-mb", 25, "MiB/s the CDN proxy serves each connection")
	flag.IntVar(&firstByteMS, "big-first-byte-ms", 40, "ms before the CDN proxy answers each request")
	flag.IntVar(&cfg.Big.PrePulledRuns, "big-prepulled-runs", 10, "starts of the pre-pulled big image and of the small image")
	flag.StringVar(&bigSidesFlag, "big-sides", strings.Join(bigSides, ","), "cold-start sides: agent, ctr (transfer service), ctr-local (client-side pull), docker (docker run -d on the moby dockerd)")
	flag.IntVar(&cfg.Big.PullLayers, "pull-layers", 0, "the agent's PULL_MAX_CONCURRENT_LAYERS in the big-image phase (0: its default)")
	flag.IntVar(&cfg.Big.PullChunkMB, "pull-chunk-mb", 0, "the agent's PULL_CHUNK_MB in the big-image phase (0: its default, no ranges)")
	flag.BoolVar(&cfg.BigOnly, "big-only", false, "run the big-image phase alone")
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
	cfg.Big.FirstByte = time.Duration(firstByteMS) * time.Millisecond
	for _, s := range strings.Split(bigSidesFlag, ",") {
		if !slices.Contains(bigSides, s) {
			fmt.Fprintf(os.Stderr, "host-agent-bench: -big-sides %q: want some of %v\n", bigSidesFlag, bigSides)
			os.Exit(2)
		}
		cfg.Big.Sides = append(cfg.Big.Sides, s)
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
