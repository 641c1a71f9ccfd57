// Command host-agent-bench measures the agent against containerd used
// directly, on one private containerd and one local image, in one run:
// rentals are started and terminated through the agent's HTTP API, with
// `ctr` (as an operator would) and with the containerd client and the same
// confinement, interleaved so that the machine's noise hits every side.
// It prints a table and writes the numbers as JSON. Needs root, containerd,
// containerd-shim-runc-v2, runc and ctr on PATH.
//
//	host-agent-bench -runs 30 -instances 200 -json bench.json
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
)

func main() {
	var cfg config
	flag.IntVar(&cfg.Runs, "runs", 30, "start/terminate measurements per side")
	flag.IntVar(&cfg.Instances, "instances", 200, "instances running while GET /instances is measured")
	flag.IntVar(&cfg.Requests, "requests", 2000, "GET /instances requests")
	flag.StringVar(&cfg.JSONPath, "json", "", "also write the results as JSON to this file")
	flag.Parse()
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
