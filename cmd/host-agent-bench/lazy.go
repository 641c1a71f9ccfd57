package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	ctrd "github.com/host-agent/host-agent/runtime/containerd"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// The lazy-pull phase (-lazy): time from a start to the payload's first
// line of output, for an eStargz image on the stargz snapshotter (lazily)
// against the same image pulled in full (overlayfs), through the
// containerd back end, behind a registry that limits each connection's
// rate. Each round runs on a fresh containerd and snapshotter, so that
// every start is cold; the sides alternate which goes first. Needs the
// snapshotter deploy/build-stargz.sh builds, and FUSE.
var (
	lazyOnly   = flag.Bool("lazy", false, "run the lazy-pull phase only (eStargz on stargz-snapshotter against a full pull): time to the payload's first line")
	lazyRounds = flag.Int("lazy-rounds", 5, "lazy-pull phase: cold starts per side")
	lazyMB     = flag.Int("lazy-mb", 2048, "lazy-pull phase: MiB of incompressible padding in the image, which the payload does not read")
	lazyLayers = flag.Int("lazy-layers", 8, "lazy-pull phase: layers the padding is split into")
	lazyRateMB = flag.Int("lazy-rate-mb", 25, "lazy-pull phase: the registry's rate per connection, MB/s (0: unlimited)")
)

type lazyConfig struct {
	Rounds, MB, Layers, RateMB int
}

// LazyResults are what the lazy-pull phase measured.
type LazyResults struct {
	Machine    string  `json:"machine"`
	ImageBytes int64   `json:"image_bytes"`
	Layers     int     `json:"padding_layers"`
	RateMB     int     `json:"rate_mb_per_s_per_connection"`
	Lazy       Stat    `json:"lazy_first_output"`
	Full       Stat    `json:"full_pull_first_output"`
	Speedup    float64 `json:"speedup"`
	// Served are the blob bytes the registry sent until the first line,
	// median per side.
	LazyServed int64 `json:"lazy_served_bytes"`
	FullServed int64 `json:"full_served_bytes"`
}

func lazyMain() int {
	lc := lazyConfig{Rounds: *lazyRounds, MB: *lazyMB, Layers: *lazyLayers, RateMB: *lazyRateMB}
	res, err := runLazy(context.Background(), lc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "host-agent-bench:", err)
		return 1
	}
	res.print(os.Stdout)
	if path := flag.Lookup("json").Value.String(); path != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "host-agent-bench:", err)
			return 1
		}
	}
	return 0
}

func runLazy(ctx context.Context, lc lazyConfig) (*LazyResults, error) {
	if lc.Rounds < 1 || lc.MB < 1 || lc.Layers < 1 || lc.RateMB < 0 {
		return nil, fmt.Errorf("-lazy-rounds, -lazy-mb and -lazy-layers must be positive, -lazy-rate-mb not negative")
	}
	if missing := testenv.Missing("containerd", "containerd-shim-runc-v2", "runc"); missing != "" {
		return nil, fmt.Errorf("prerequisites: %s", missing)
	}
	bin, err := testenv.StargzBinary()
	if err != nil {
		return nil, err
	}
	reg := testenv.StartRegistry()
	defer reg.Close()
	img, err := reg.PushEstargzPayloadLayers("bench-lazy:estargz", lc.Layers, lc.MB<<20/lc.Layers)
	if err != nil {
		return nil, err
	}
	reg.Throttle(int64(lc.RateMB) * 1000 * 1000)
	proxy := testenv.StartCountingProxy(reg.Host)
	defer proxy.Close()
	ref := proxy.Host + "/bench-lazy:estargz"

	var lazy, full []time.Duration
	var lazyServed, fullServed []int64
	for round := range lc.Rounds {
		for i := range 2 {
			isLazy := (round+i)%2 == 0
			d, served, err := firstOutput(ctx, bin, ref, isLazy, proxy)
			if err != nil {
				return nil, fmt.Errorf("round %d (lazy %v): %w", round, isLazy, err)
			}
			if isLazy {
				lazy, lazyServed = append(lazy, d), append(lazyServed, served)
			} else {
				full, fullServed = append(full, d), append(fullServed, served)
			}
		}
	}
	res := &LazyResults{Machine: machine(), ImageBytes: img.Size, Layers: lc.Layers, RateMB: lc.RateMB,
		Lazy: summarize(lazy), Full: summarize(full)}
	if res.Lazy.Median > 0 {
		res.Speedup = res.Full.Median / res.Lazy.Median
	}
	res.LazyServed, res.FullServed = median(lazyServed), median(fullServed)
	return res, nil
}

func median(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// firstOutput starts the payload from ref on a fresh containerd (and
// snapshotter) and returns the time from the start's call to its first
// line in the rental's output, and the blob bytes served meanwhile.
func firstOutput(ctx context.Context, stargzBin, ref string, lazy bool, proxy *testenv.CountingProxy) (time.Duration, int64, error) {
	work, err := os.MkdirTemp("", "host-agent-bench-lazy-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(work)
	// The snapshotter's own defaults, as deploy/setup-host.sh --lazy-pull
	// installs it.
	sn, err := testenv.StartStargzWithConfig(stargzBin, filepath.Join(work, "stargz"), "")
	if err != nil {
		return 0, 0, err
	}
	defer sn.Stop()
	d, err := testenv.StartContainerdWith(filepath.Join(work, "containerd"), sn.ProxyPluginConfig())
	if err != nil {
		return 0, 0, err
	}
	defer d.Close()
	opts := ctrd.Options{Address: d.Address, Namespace: "bench-lazy", AgentID: "bench", LogDir: filepath.Join(work, "logs"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if lazy {
		opts.Snapshotter = ctrd.StargzSnapshotter
	}
	be, err := ctrd.New(opts)
	if err != nil {
		return 0, 0, err
	}
	l := lifecycle.New(be, lifecycle.Options{Logger: opts.Logger})
	defer l.Close()
	if err := l.Restore(ctx); err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	const id = "first-output"
	before := proxy.BlobBytes()
	t0 := time.Now()
	if _, err := l.Start(ctx, runtime.InstanceSpec{ID: id, Image: ref, Command: []string{"echo", "first-line", "sleep", "inf"}}); err != nil {
		return 0, 0, err
	}
	for {
		out, _, err := l.Logs(ctx, id, 10)
		if err != nil {
			return 0, 0, err
		}
		if strings.Contains(string(out), "first-line") {
			break
		}
		select {
		case <-ctx.Done():
			return 0, 0, fmt.Errorf("no output: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	elapsed, served := time.Since(t0), proxy.BlobBytes()-before
	if err := l.Terminate(ctx, id, 0); err != nil {
		return 0, 0, err
	}
	return elapsed, served, nil
}

func (r *LazyResults) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "lazy pulling: %s, image %.0f MiB (payload + %d padding layers), registry %d MB/s per connection\n",
		r.Machine, float64(r.ImageBytes)/(1<<20), r.Layers, r.RateMB)
	fmt.Fprintln(tw, "side\tfirst output median ms\tp95 ms\tn\tserved until then MiB")
	fmt.Fprintf(tw, "eStargz on stargz (lazy)\t%.0f\t%.0f\t%d\t%.1f\n", r.Lazy.Median, r.Lazy.P95, r.Lazy.N, float64(r.LazyServed)/(1<<20))
	fmt.Fprintf(tw, "full pull (overlayfs)\t%.0f\t%.0f\t%d\t%.1f\n", r.Full.Median, r.Full.P95, r.Full.N, float64(r.FullServed)/(1<<20))
	fmt.Fprintf(tw, "full / lazy\t%.1fx\n", r.Speedup)
	tw.Flush()
}
