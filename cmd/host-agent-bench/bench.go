package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerdclient "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/host-agent/host-agent/runtime"
	ctrd "github.com/host-agent/host-agent/runtime/containerd"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/testenv"
	"github.com/host-agent/host-agent/server"
)

type config struct {
	Runs, Instances, Requests int
	JSONPath                  string
}

const benchToken = "bench-token-0123456789abcdef"

// Stat is a sample's summary, in milliseconds.
type Stat struct {
	N      int     `json:"n"`
	Median float64 `json:"median_ms"`
	P95    float64 `json:"p95_ms"`
	P99    float64 `json:"p99_ms"`
}

func summarize(d []time.Duration) Stat {
	if len(d) == 0 {
		return Stat{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	q := func(p float64) float64 {
		i := int(p*float64(len(s)-1) + 0.5)
		return float64(s[i]) / float64(time.Millisecond)
	}
	return Stat{N: len(s), Median: q(0.5), P95: q(0.95), P99: q(0.99)}
}

// Results are what one run measured.
type Results struct {
	Machine   string          `json:"machine"`
	Start     map[string]Stat `json:"start"`
	Terminate map[string]Stat `json:"terminate"`
	// Ratios are the agent's medians over each other side's.
	Ratios map[string]float64 `json:"ratios"`
	List   struct {
		Instances int     `json:"instances"`
		Requests  int     `json:"requests"`
		PerSecond float64 `json:"requests_per_second"`
		Latency   Stat    `json:"latency"`
		Bytes     int     `json:"response_bytes"`
	} `json:"get_instances"`
}

// sides of the start/terminate comparison.
const (
	sideAgent  = "agent"
	sideCtr    = "ctr"
	sideClient = "client-confined"
)

func run(ctx context.Context, cfg config) (*Results, error) {
	if cfg.Runs < 1 || cfg.Instances < 1 || cfg.Requests < 1 {
		return nil, fmt.Errorf("-runs, -instances and -requests must be positive")
	}
	if missing := testenv.Missing("containerd", "containerd-shim-runc-v2", "runc", "ctr"); missing != "" {
		return nil, fmt.Errorf("prerequisites: %s", missing)
	}
	work, err := os.MkdirTemp("", "host-agent-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	daemon, err := testenv.StartContainerd(filepath.Join(work, "containerd"))
	if err != nil {
		return nil, err
	}
	defer daemon.Close()
	reg := testenv.StartRegistry()
	defer reg.Close()
	image, err := reg.PushPayload("payload:bench")
	if err != nil {
		return nil, err
	}

	agent, err := startAgent(ctx, daemon.Address, filepath.Join(work, "logs"))
	if err != nil {
		return nil, err
	}
	defer agent.close()
	direct, err := newDirect(ctx, daemon.Address, image, filepath.Join(work, "direct-logs"))
	if err != nil {
		return nil, err
	}
	defer direct.close()
	ctr := ctrSide{address: daemon.Address, image: image}
	if err := ctr.pull(ctx); err != nil {
		return nil, err
	}

	// One warm-up round per side: the image is unpacked and caches are
	// filled before anything is timed.
	sides := map[string]side{
		sideAgent:  agentSide{agent: agent, image: image},
		sideCtr:    ctr,
		sideClient: direct,
	}
	order := []string{sideAgent, sideCtr, sideClient}
	for _, name := range order {
		if err := sides[name].start(ctx, "warm-"+name); err != nil {
			return nil, fmt.Errorf("%s warm-up start: %w", name, err)
		}
		if err := sides[name].terminate(ctx, "warm-"+name); err != nil {
			return nil, fmt.Errorf("%s warm-up terminate: %w", name, err)
		}
	}
	starts, terms := map[string][]time.Duration{}, map[string][]time.Duration{}
	for i := range cfg.Runs {
		// The order rotates so that no side always follows another.
		for k := range order {
			name := order[(i+k)%len(order)]
			id := fmt.Sprintf("b%d-%s", i, name)
			t0 := time.Now()
			if err := sides[name].start(ctx, id); err != nil {
				return nil, fmt.Errorf("%s start %s: %w", name, id, err)
			}
			starts[name] = append(starts[name], time.Since(t0))
			t0 = time.Now()
			if err := sides[name].terminate(ctx, id); err != nil {
				return nil, fmt.Errorf("%s terminate %s: %w", name, id, err)
			}
			terms[name] = append(terms[name], time.Since(t0))
		}
	}
	res := &Results{Machine: machine(), Start: map[string]Stat{}, Terminate: map[string]Stat{}, Ratios: map[string]float64{}}
	for _, name := range order {
		res.Start[name] = summarize(starts[name])
		res.Terminate[name] = summarize(terms[name])
	}
	for _, other := range []string{sideCtr, sideClient} {
		res.Ratios["start_agent_over_"+other] = res.Start[sideAgent].Median / res.Start[other].Median
		res.Ratios["terminate_agent_over_"+other] = res.Terminate[sideAgent].Median / res.Terminate[other].Median
	}
	if err := measureList(ctx, agent, image, cfg, res); err != nil {
		return nil, err
	}
	return res, nil
}

// measureList starts cfg.Instances rentals through the agent, then times
// GET /instances from 8 clients at once, and terminates them.
func measureList(ctx context.Context, a *agentProc, image string, cfg config, res *Results) error {
	var ids []string
	defer func() {
		for _, id := range ids {
			_ = a.terminate(ctx, id)
		}
	}()
	for i := range cfg.Instances {
		id := fmt.Sprintf("list-%d", i)
		if err := a.start(ctx, id, image); err != nil {
			return fmt.Errorf("start %s: %w", id, err)
		}
		ids = append(ids, id)
	}
	const clients = 8
	lat := make([][]time.Duration, clients)
	errs := make([]error, clients)
	var size int
	var wg sync.WaitGroup
	t0 := time.Now()
	for c := range clients {
		wg.Go(func() {
			for i := c; i < cfg.Requests; i += clients {
				s := time.Now()
				n, err := a.list(ctx)
				if err != nil {
					errs[c] = err
					return
				}
				lat[c] = append(lat[c], time.Since(s))
				if c == 0 {
					size = n
				}
			}
		})
	}
	wg.Wait()
	wall := time.Since(t0)
	var all []time.Duration
	for c := range clients {
		if errs[c] != nil {
			return errs[c]
		}
		all = append(all, lat[c]...)
	}
	res.List.Instances, res.List.Requests = cfg.Instances, len(all)
	res.List.PerSecond = float64(len(all)) / wall.Seconds()
	res.List.Latency = summarize(all)
	res.List.Bytes = size
	return nil
}

type side interface {
	start(ctx context.Context, id string) error
	terminate(ctx context.Context, id string) error
}

// agentProc is the agent's whole serving stack (API server, lifecycle,
// containerd back end) on 127.0.0.1, driven over HTTP.
type agentProc struct {
	base   string
	client *http.Client
	stop   context.CancelFunc
	done   chan error
	rt     *ctrd.Runtime
}

func startAgent(ctx context.Context, address, logDir string) (*agentProc, error) {
	hub := events.NewHub(0, nil)
	logger := slog.New(slog.DiscardHandler)
	be, err := ctrd.New(ctrd.Options{Address: address, Namespace: "rentals", AgentID: "bench", LogDir: logDir, Events: hub, Logger: logger})
	if err != nil {
		return nil, err
	}
	lc := runtime.NewLifecycle(be, runtime.LifecycleOptions{Events: hub, Logger: logger})
	if err := lc.Restore(ctx); err != nil {
		return nil, err
	}
	srv, err := server.New(server.Options{Runtime: lc, Hub: hub, Token: benchToken, AgentID: "bench", Logger: logger})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	a := &agentProc{base: "http://" + ln.Addr().String(), client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		stop: cancel, done: make(chan error, 1), rt: be}
	go func() { a.done <- srv.Serve(sctx, ln) }()
	return a, nil
}

func (a *agentProc) close() {
	a.stop()
	<-a.done
	_ = a.rt.Close()
}

func (a *agentProc) post(ctx context.Context, path string, body any) error {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.base+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+benchToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %d %s", path, resp.StatusCode, out)
	}
	return nil
}

func (a *agentProc) start(ctx context.Context, id, image string) error {
	return a.post(ctx, "/start_instance", map[string]any{"instance_id": id, "image": image, "command": []string{"sleep", "inf"}})
}

func (a *agentProc) terminate(ctx context.Context, id string) error {
	return a.post(ctx, "/terminate_instance", map[string]any{"instance_id": id, "timeout_seconds": 0})
}

func (a *agentProc) list(ctx context.Context) (int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/instances", nil)
	req.Header.Set("Authorization", "Bearer "+benchToken)
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /instances: %d %v", resp.StatusCode, err)
	}
	return len(b), nil
}

type agentSide struct {
	agent *agentProc
	image string
}

func (s agentSide) start(ctx context.Context, id string) error {
	return s.agent.start(ctx, id, s.image)
}
func (s agentSide) terminate(ctx context.Context, id string) error {
	return s.agent.terminate(ctx, id)
}

// ctrSide runs what an operator would type.
type ctrSide struct{ address, image string }

func (c ctrSide) ctr(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", c.address, "-n", "bench-ctr"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ctr %v: %w: %s", args, err, out)
	}
	return nil
}

func (c ctrSide) pull(ctx context.Context) error {
	return c.ctr(ctx, "images", "pull", "--plain-http", c.image)
}

func (c ctrSide) start(ctx context.Context, id string) error {
	return c.ctr(ctx, "run", "-d", c.image, id, "/payload", "sleep", "inf")
}

func (c ctrSide) terminate(ctx context.Context, id string) error {
	if err := c.ctr(ctx, "task", "kill", "-s", "SIGKILL", id); err != nil {
		return err
	}
	// -f: the kill is asynchronous; rm would otherwise race the exit.
	if err := c.ctr(ctx, "task", "rm", "-f", id); err != nil {
		return err
	}
	return c.ctr(ctx, "containers", "rm", id)
}

// directSide is containerd's client with the tenant confinement the agent
// applies (no_new_privileges, default seccomp), nothing else.
type directSide struct {
	cl     *containerdclient.Client
	img    containerdclient.Image
	logDir string
	mu     sync.Mutex
	exits  map[string]<-chan containerdclient.ExitStatus
}

func newDirect(ctx context.Context, address, image, logDir string) (*directSide, error) {
	cl, err := containerdclient.New(address)
	if err != nil {
		return nil, err
	}
	ctx = namespaces.WithNamespace(ctx, "bench-client")
	img, err := cl.Pull(ctx, image, containerdclient.WithPullUnpack,
		containerdclient.WithResolver(docker.NewResolver(docker.ResolverOptions{
			Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts)),
		})))
	if err != nil {
		cl.Close()
		return nil, err
	}
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return nil, err
	}
	return &directSide{cl: cl, img: img, logDir: logDir, exits: map[string]<-chan containerdclient.ExitStatus{}}, nil
}

func (d *directSide) close() { d.cl.Close() }

func (d *directSide) start(ctx context.Context, id string) error {
	ctx = namespaces.WithNamespace(ctx, "bench-client")
	c, err := d.cl.NewContainer(ctx, id,
		containerdclient.WithNewSnapshot(id, d.img),
		containerdclient.WithRuntime(ctrd.RuncRuntime, &options.Options{}),
		containerdclient.WithNewSpec(oci.WithImageConfigArgs(d.img, []string{"sleep", "inf"}),
			oci.WithNoNewPrivileges, seccomp.WithDefaultProfile()))
	if err != nil {
		return err
	}
	task, err := c.NewTask(ctx, cio.LogFile(filepath.Join(d.logDir, id+".log")))
	if err != nil {
		return err
	}
	exitC, err := task.Wait(namespaces.WithNamespace(context.Background(), "bench-client"))
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.exits[id] = exitC
	d.mu.Unlock()
	return task.Start(ctx)
}

func (d *directSide) terminate(ctx context.Context, id string) error {
	ctx = namespaces.WithNamespace(ctx, "bench-client")
	c, err := d.cl.LoadContainer(ctx, id)
	if err != nil {
		return err
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return err
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		return err
	}
	d.mu.Lock()
	exitC := d.exits[id]
	delete(d.exits, id)
	d.mu.Unlock()
	<-exitC
	if _, err := task.Delete(ctx); err != nil {
		return err
	}
	return c.Delete(ctx, containerdclient.WithSnapshotCleanup)
}

func machine() string {
	var u syscall.Utsname
	_ = syscall.Uname(&u)
	b := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	load, _ := os.ReadFile("/proc/loadavg")
	return fmt.Sprintf("linux %s, %d CPUs, loadavg %s", b, goruntime.NumCPU(), bytes.TrimSpace(load))
}

func (r *Results) printTable(w io.Writer) {
	fmt.Fprintf(w, "machine: %s\n\n", r.Machine)
	fmt.Fprintf(w, "%-28s %6s %10s %10s\n", "measure", "n", "median ms", "p95 ms")
	for _, name := range []string{sideAgent, sideCtr, sideClient} {
		s := r.Start[name]
		fmt.Fprintf(w, "%-28s %6d %10.1f %10.1f\n", "start "+name, s.N, s.Median, s.P95)
	}
	for _, name := range []string{sideAgent, sideCtr, sideClient} {
		s := r.Terminate[name]
		fmt.Fprintf(w, "%-28s %6d %10.1f %10.1f\n", "terminate "+name, s.N, s.Median, s.P95)
	}
	fmt.Fprintln(w)
	for _, k := range []string{"start_agent_over_ctr", "start_agent_over_client-confined", "terminate_agent_over_ctr", "terminate_agent_over_client-confined"} {
		fmt.Fprintf(w, "%-40s %6.2f\n", k, r.Ratios[k])
	}
	l := r.List
	fmt.Fprintf(w, "\nGET /instances with %d instances: %d requests, %.0f req/s, median %.1f ms, p99 %.1f ms, %d bytes\n",
		l.Instances, l.Requests, l.PerSecond, l.Latency.Median, l.Latency.P99, l.Bytes)
}

func (r *Results) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
