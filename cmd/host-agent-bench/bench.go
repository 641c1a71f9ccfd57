package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerdclient "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/host-agent/host-agent/internal/testenv"
	ctrd "github.com/host-agent/host-agent/runtime/containerd"
)

type config struct {
	Runs, Instances, Requests int
	// Bursts are the sizes of the concurrent start bursts.
	Bursts []int
	// Cycles start/terminate cycles, Parallel at a time, for the leak check.
	Cycles, Parallel int
	JSONPath         string
	// NetRuns are the start/terminate measurements per side with a
	// network on every side (0: no networked phase).
	NetRuns int
	// ProfileDir, when set, receives the agent's CPU profiles of the
	// start/terminate runs, the GET /instances load and the bursts.
	ProfileDir string
	// Big is the big-image phase (none when Big.Rounds is 0); BigOnly
	// runs it alone.
	Big     bigConfig
	BigOnly bool
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
	// Concurrent are the start bursts, agent and raw client, CPU-only and
	// with the mock GPUs.
	Concurrent []Concurrent `json:"concurrent_starts"`
	// ExitToWS is from a task's exit (containerd's time) to its
	// instance.exited event arriving on /ws.
	ExitToWS  Stat      `json:"exit_to_ws"`
	Footprint Footprint `json:"footprint"`
	// Calls are the containerd calls of one start and terminate during
	// the interleaved runs, by side and method.
	Calls     map[string]map[string]CallStat `json:"containerd_calls"`
	Heartbeat Heartbeat                      `json:"heartbeat"`
	// Networked is start and terminate with a network on every side.
	Networked *Networked `json:"networked,omitempty"`
	List      struct {
		Instances int     `json:"instances"`
		Requests  int     `json:"requests"`
		PerSecond float64 `json:"requests_per_second"`
		Latency   Stat    `json:"latency"`
		Bytes     int     `json:"response_bytes"`
	} `json:"get_instances"`
	BigImage *BigImage `json:"big_image,omitempty"`
}

// sides of the start/terminate comparison.
const (
	sideAgent  = "agent"
	sideCtr    = "ctr"
	sideClient = "client-confined"
)

func run(ctx context.Context, cfg config) (*Results, error) {
	if cfg.Runs < 1 || cfg.Instances < 1 || cfg.Requests < 1 || cfg.Cycles < 0 || cfg.Parallel < 1 || cfg.NetRuns < 0 {
		return nil, fmt.Errorf("-runs, -instances, -requests and -parallel must be positive, -cycles and -net-runs not negative")
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
	if cfg.BigOnly {
		res := &Results{Machine: machine()}
		res.BigImage, err = runBig(ctx, daemon.Address, work, image, cfg.Big)
		return res, err
	}
	srv := newCentral()
	defer srv.Close()

	// The agent as a host with 8 GPUs reports to the fake central server.
	agent, err := startAgent(ctx, daemon.Address, filepath.Join(work, "agent"), 8, srv.URL, cfg.ProfileDir)
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
	res := &Results{Machine: machine(), Start: map[string]Stat{}, Terminate: map[string]Stat{}, Ratios: map[string]float64{}}
	settle()
	res.Footprint.IdleRSSMB = rssMB(agent.pid())
	if res.Footprint.IdleGoroutines, err = agent.goroutines(ctx); err != nil {
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
	agentBefore, err := agent.metricsText(ctx)
	if err != nil {
		return nil, err
	}
	clientBefore := direct.metricsText()
	err = agent.withProfile("start-terminate", func() error {
		return interleaved(ctx, sides, order, cfg.Runs, "b", starts, terms)
	})
	if err != nil {
		return nil, err
	}
	agentAfter, err := agent.metricsText(ctx)
	if err != nil {
		return nil, err
	}
	res.Calls = map[string]map[string]CallStat{
		sideAgent:  perRun(callTotals(agentBefore), callTotals(agentAfter), cfg.Runs),
		sideClient: perRun(callTotals(clientBefore), callTotals(direct.metricsText()), cfg.Runs),
	}
	for _, name := range order {
		res.Start[name] = summarize(starts[name])
		res.Terminate[name] = summarize(terms[name])
	}
	for _, other := range []string{sideCtr, sideClient} {
		res.Ratios["start_agent_over_"+other] = res.Start[sideAgent].Median / res.Start[other].Median
		res.Ratios["terminate_agent_over_"+other] = res.Terminate[sideAgent].Median / res.Terminate[other].Median
	}
	if res.ExitToWS, err = measureExitLatency(ctx, agent, daemon.Address, image, cfg.Runs); err != nil {
		return nil, fmt.Errorf("exit latency: %w", err)
	}
	if err := measureList(ctx, agent, image, cfg, res, srv); err != nil {
		return nil, err
	}
	if cfg.Cycles > 0 {
		cycles(ctx, agent, image, cfg.Cycles, cfg.Parallel, &res.Footprint)
		settle()
		res.Footprint.AfterCyclesRSSMB = rssMB(agent.pid())
		if res.Footprint.AfterCyclesGorout, err = agent.goroutines(ctx); err != nil {
			return nil, err
		}
	}
	if err := agent.withProfile("bursts", func() error { return bursts(ctx, agent, direct, image, cfg.Bursts, false, res) }); err != nil {
		return nil, err
	}
	agent.close()

	// GPU bursts: a host with a GPU for each start of the largest burst.
	most := slices.Max(append(slices.Clone(cfg.Bursts), 1))
	gpuAgent, err := startAgent(ctx, daemon.Address, filepath.Join(work, "gpu-agent"), most, "", cfg.ProfileDir)
	if err != nil {
		return nil, err
	}
	defer gpuAgent.close()
	if err := direct.useCDI(filepath.Join(gpuAgent.work, "cdi")); err != nil {
		return nil, err
	}
	if err := gpuAgent.withProfile("gpu-bursts", func() error { return bursts(ctx, gpuAgent, direct, image, cfg.Bursts, true, res) }); err != nil {
		return nil, err
	}
	gpuAgent.close()
	if cfg.NetRuns > 0 {
		if res.Networked, err = networked(ctx, cfg, daemon.Address, image, work, direct); err != nil {
			return nil, fmt.Errorf("networked: %w", err)
		}
	}
	if cfg.Big.Rounds > 0 {
		if res.BigImage, err = runBig(ctx, daemon.Address, work, image, cfg.Big); err != nil {
			return nil, fmt.Errorf("big image: %w", err)
		}
	}
	return res, nil
}

// runBig runs the big-image phase, small being the small image.
func runBig(ctx context.Context, address, work, small string, cfg bigConfig) (*BigImage, error) {
	bin, err := testenv.BuildPayload()
	if err != nil {
		return nil, err
	}
	return measureBig(ctx, address, filepath.Join(work, "big"), bin, small, cfg)
}

// bursts starts each burst's rentals at once through the agent and through
// the raw client, the agent's GPU rentals asking for one GPU each and the
// client's getting one through the same CDI spec, and the same CPU and
// memory limits as the agent's (see rentalLimits): a GPU rental's share of
// the bench's 2-CPU host with hundreds of mock GPUs is a hundredth of a
// CPU, which throttles its own start, on either side alike.
func bursts(ctx context.Context, a *agentProc, d *directSide, image string, sizes []int, gpus bool, res *Results) error {
	kind := map[bool]string{false: "cpu", true: "gpu"}[gpus]
	gpuCount := map[bool]int{false: 0, true: 1}[gpus]
	limits, err := rentalLimits(ctx, a, image, gpuCount)
	if err != nil {
		return err
	}
	for _, n := range sizes {
		id := func(s string, i int) string { return fmt.Sprintf("burst-%s-%d-%s-%d", kind, n, s, i) }
		ag, err := burst(ctx, n, gpus, sideAgent,
			func(ctx context.Context, i int) error { return a.start(ctx, id("a", i), image, gpuCount) },
			func(ctx context.Context, i int) error { return a.terminate(ctx, id("a", i)) })
		if err != nil {
			return err
		}
		cl, err := burst(ctx, n, gpus, sideClient,
			func(ctx context.Context, i int) error {
				if gpus {
					return d.startGPU(ctx, id("c", i), i, limits)
				}
				return d.startWith(ctx, id("c", i), limits)
			},
			func(ctx context.Context, i int) error { return d.terminate(ctx, id("c", i)) })
		if err != nil {
			return err
		}
		res.Concurrent = append(res.Concurrent, ag, cl)
		res.Ratios[fmt.Sprintf("burst_%d_%s_agent_over_client", n, kind)] = ag.WallMS / cl.WallMS
	}
	return nil
}

// measureList starts cfg.Instances rentals through the agent, then times
// GET /instances from 8 clients at once, and terminates them.
func measureList(ctx context.Context, a *agentProc, image string, cfg config, res *Results, srv *central) error {
	var ids []string
	defer func() {
		for _, id := range ids {
			_ = a.terminate(ctx, id)
		}
	}()
	for i := range cfg.Instances {
		id := fmt.Sprintf("list-%d", i)
		if err := a.start(ctx, id, image, 0); err != nil {
			return fmt.Errorf("start %s: %w", id, err)
		}
		ids = append(ids, id)
	}
	hb, err := srv.heartbeatAfter(time.Now().Add(heartbeatEvery))
	if err != nil {
		return err
	}
	res.Heartbeat = hb
	settle()
	res.Footprint.WithInstancesRSSMB = rssMB(a.pid())
	if res.Footprint.WithInstancesGorout, err = a.goroutines(ctx); err != nil {
		return err
	}
	const clients = 8
	lat := make([][]time.Duration, clients)
	errs := make([]error, clients)
	var size int
	var wg sync.WaitGroup
	t0 := time.Now()
	_ = a.withProfile("get-instances", func() error {
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
		return nil
	})
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

// agentProc is the agent's serving stack in a child process (see
// childMain) on 127.0.0.1, driven over HTTP.
type agentProc struct {
	base   string
	work   string
	client *http.Client
	cmd    *exec.Cmd
	// profileDir receives CPU profiles ("": none taken); profiles counts
	// them.
	profileDir string
	profiles   int
	closeOnce  sync.Once
}

// startAgent starts the agent child with a host of gpus mock GPUs, its files
// under work, reporting to centralURL ("": standalone), with env added to
// its environment.
func startAgent(ctx context.Context, address, work string, gpus int, centralURL, profileDir string, env ...string) (*agentProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=1", envContainerd+"="+address, envWorkDir+"="+work,
		envGPUs+"="+strconv.Itoa(gpus), envCentral+"="+centralURL, envProfileDir+"="+profileDir)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	a := &agentProc{work: work, cmd: cmd, profileDir: profileDir,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		a.close()
		return nil, fmt.Errorf("agent child did not start: %w", err)
	}
	a.base = "http://" + strings.TrimSpace(line)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := a.goroutines(ctx); err == nil {
			return a, nil
		} else if time.Now().After(deadline) {
			a.close()
			return nil, fmt.Errorf("agent child does not answer: %w", err)
		}
	}
}

func (a *agentProc) pid() int { return a.cmd.Process.Pid }

func (a *agentProc) close() {
	a.closeOnce.Do(func() {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = a.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = a.cmd.Process.Kill()
			<-done
		}
	})
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

func (a *agentProc) start(ctx context.Context, id, image string, gpus int) error {
	req := map[string]any{"instance_id": id, "image": image, "command": []string{"sleep", "inf"}}
	if gpus > 0 {
		req["gpu_count"] = gpus
	}
	return a.post(ctx, "/start_instance", req)
}

func (a *agentProc) terminate(ctx context.Context, id string) error {
	return a.post(ctx, "/terminate_instance", map[string]any{"instance_id": id, "timeout_seconds": 0})
}

func (a *agentProc) list(ctx context.Context) (int, error) {
	b, err := a.get(ctx, "/instances")
	return len(b), err
}

// get sends an authenticated GET and returns the body of a 200 answer.
func (a *agentProc) get(ctx context.Context, path string) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+benchToken)
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return b, nil
}

type agentSide struct {
	agent *agentProc
	image string
}

func (s agentSide) start(ctx context.Context, id string) error {
	return s.agent.start(ctx, id, s.image, 0)
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
	// calls times the client's calls to containerd, as the agent's are.
	calls *prometheus.HistogramVec
	// cdi and devices inject GPUs as the agent's CDI spec describes them.
	cdi     *cdilib.Cache
	devices []string
}

// useCDI reads the CDI specs in dir for startGPU.
func (d *directSide) useCDI(dir string) error {
	cache, err := cdilib.NewCache(cdilib.WithSpecDirs(dir), cdilib.WithAutoRefresh(false))
	if err != nil {
		return err
	}
	d.cdi, d.devices = cache, cache.ListDevices()
	if len(d.devices) == 0 {
		return fmt.Errorf("no CDI devices in %s", dir)
	}
	return nil
}

// startGPU starts a rental with the i-th GPU of the CDI spec.
func (d *directSide) startGPU(ctx context.Context, id string, i int, extra ...oci.SpecOpts) error {
	dev := d.devices[i%len(d.devices)]
	return d.startWith(ctx, id, append(extra, func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		_, err := d.cdi.InjectDevices(s, dev)
		return err
	})...)
}

// rentalLimits starts one rental with gpus GPUs through the agent, reads
// the CPUs and memory the agent gave it (GET /host's allocation, the probe
// being the only rental held), terminates it, and returns them as the
// client's spec options: a CFS quota and a memory limit.
func rentalLimits(ctx context.Context, a *agentProc, image string, gpus int) (oci.SpecOpts, error) {
	const id = "burst-limits-probe"
	if err := a.start(ctx, id, image, gpus); err != nil {
		return nil, fmt.Errorf("start the limits probe: %w", err)
	}
	b, err := a.get(ctx, "/host")
	if terr := a.terminate(ctx, id); err == nil {
		err = terr
	}
	if err != nil {
		return nil, fmt.Errorf("limits probe: %w", err)
	}
	var host struct {
		Resources *struct {
			CPUs     float64 `json:"allocated_cpus"`
			MemoryMB int64   `json:"allocated_memory_mb"`
		} `json:"resources"`
	}
	if err := json.Unmarshal(b, &host); err != nil || host.Resources == nil || host.Resources.CPUs <= 0 || host.Resources.MemoryMB <= 0 {
		return nil, fmt.Errorf("GET /host gives no rental's allocation (%v): %s", err, b)
	}
	const period = 100000
	quota, mem := int64(host.Resources.CPUs*period), uint64(host.Resources.MemoryMB)<<20
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
		if err := oci.WithCPUCFS(quota, period)(ctx, c, ctr, s); err != nil {
			return err
		}
		return oci.WithMemoryLimit(mem)(ctx, c, ctr, s)
	}, nil
}

func newDirect(ctx context.Context, address, image, logDir string) (*directSide, error) {
	calls := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: ctrd.CallDurationMetric, Help: "Calls to containerd."}, []string{"method", "code"})
	cl, err := containerdclient.New(address,
		containerdclient.WithExtraDialOpts([]grpc.DialOption{grpc.WithChainUnaryInterceptor(ctrd.TimeCalls(calls))}))
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
	return &directSide{cl: cl, img: img, logDir: logDir, calls: calls, exits: map[string]<-chan containerdclient.ExitStatus{}}, nil
}

func (d *directSide) close() { d.cl.Close() }

func (d *directSide) start(ctx context.Context, id string) error {
	return d.startWith(ctx, id)
}

func (d *directSide) startWith(ctx context.Context, id string, extra ...oci.SpecOpts) error {
	ctx = namespaces.WithNamespace(ctx, "bench-client")
	opts := append([]oci.SpecOpts{oci.WithImageConfigArgs(d.img, []string{"sleep", "inf"}),
		oci.WithNoNewPrivileges, seccomp.WithDefaultProfile()}, extra...)
	c, err := d.cl.NewContainer(ctx, id,
		containerdclient.WithNewSnapshot(id, d.img),
		containerdclient.WithRuntime(ctrd.RuncRuntime, &options.Options{}),
		containerdclient.WithNewSpec(opts...))
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
	if r.BigImage != nil {
		defer r.BigImage.print(w)
	}
	if r.Start == nil {
		return // the big-image phase alone
	}
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
	fmt.Fprintf(w, "\n%-28s %6s %10s %9s\n", "concurrent starts", "side", "wall ms", "failures")
	for _, c := range r.Concurrent {
		kind := map[bool]string{false: "cpu", true: "gpu"}[c.GPUs]
		fmt.Fprintf(w, "%-28s %6s %10.0f %9d\n", fmt.Sprintf("%d %s", c.Starts, kind), map[string]string{sideAgent: "agent", sideClient: "client"}[c.Side], c.WallMS, c.Failures)
		if c.FirstError != "" {
			fmt.Fprintf(w, "    first failure: %s\n", c.FirstError)
		}
		if c.TerminateFailures > 0 {
			fmt.Fprintf(w, "    %d terminates after the burst failed; first: %s\n", c.TerminateFailures, c.FirstTerminateError)
		}
	}
	for _, c := range r.Concurrent {
		if c.Side == sideAgent {
			kind := map[bool]string{false: "cpu", true: "gpu"}[c.GPUs]
			k := fmt.Sprintf("burst_%d_%s_agent_over_client", c.Starts, kind)
			fmt.Fprintf(w, "%-40s %6.2f\n", k, r.Ratios[k])
		}
	}
	fmt.Fprintf(w, "\ncontainerd calls per start+terminate (interleaved runs)\n%-40s %8s %8s %8s %8s\n", "method", "agent n", "agent ms", "client n", "client ms")
	var methods []string
	for m := range r.Calls[sideAgent] {
		methods = append(methods, m)
	}
	for m := range r.Calls[sideClient] {
		if _, ok := r.Calls[sideAgent][m]; !ok {
			methods = append(methods, m)
		}
	}
	slices.SortFunc(methods, func(a, b string) int {
		return cmp.Compare(r.Calls[sideAgent][b].MS+r.Calls[sideClient][b].MS, r.Calls[sideAgent][a].MS+r.Calls[sideClient][a].MS)
	})
	var tot [4]float64
	for _, m := range methods {
		a, c := r.Calls[sideAgent][m], r.Calls[sideClient][m]
		fmt.Fprintf(w, "%-40s %8.1f %8.1f %8.1f %8.1f\n", m, a.Calls, a.MS, c.Calls, c.MS)
		tot[0], tot[1], tot[2], tot[3] = tot[0]+a.Calls, tot[1]+a.MS, tot[2]+c.Calls, tot[3]+c.MS
	}
	fmt.Fprintf(w, "%-40s %8.1f %8.1f %8.1f %8.1f\n", "total", tot[0], tot[1], tot[2], tot[3])
	e := r.ExitToWS
	fmt.Fprintf(w, "\nexit -> /ws event: n %d, p50 %.1f ms, p99 %.1f ms\n", e.N, e.Median, e.P99)
	f := r.Footprint
	fmt.Fprintf(w, "agent RSS: idle %.1f MB, with %d instances %.1f MB, after %d cycles %.1f MB (during: %.1f MB; %d failed)\n",
		f.IdleRSSMB, r.List.Instances, f.WithInstancesRSSMB, f.Cycles, f.AfterCyclesRSSMB, f.RSSDuringCyclesMB, f.CycleFailures)
	fmt.Fprintf(w, "agent goroutines: idle %d, with %d instances %d, after cycles %d\n",
		f.IdleGoroutines, r.List.Instances, f.WithInstancesGorout, f.AfterCyclesGorout)
	r.Networked.print(w)
	h := r.Heartbeat
	fmt.Fprintf(w, "heartbeat: %d GPUs, %d instances, %d bytes\n", h.GPUs, h.Instances, h.Bytes)
	l := r.List
	fmt.Fprintf(w, "GET /instances with %d instances: %d requests, %.0f req/s, median %.1f ms, p99 %.1f ms, %d bytes\n",
		l.Instances, l.Requests, l.PerSecond, l.Latency.Median, l.Latency.P99, l.Bytes)
}

func (r *Results) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// interleaved starts and terminates one rental per side, runs times, the
// order rotating so that no side always follows another, and appends each
// side's start and terminate latencies to starts and terms.
func interleaved(ctx context.Context, sides map[string]side, order []string, runs int, prefix string, starts, terms map[string][]time.Duration) error {
	for i := range runs {
		for k := range order {
			name := order[(i+k)%len(order)]
			id := fmt.Sprintf("%s%d-%s", prefix, i, name)
			t0 := time.Now()
			if err := sides[name].start(ctx, id); err != nil {
				return fmt.Errorf("%s start %s: %w", name, id, err)
			}
			starts[name] = append(starts[name], time.Since(t0))
			t0 = time.Now()
			if err := sides[name].terminate(ctx, id); err != nil {
				return fmt.Errorf("%s terminate %s: %w", name, id, err)
			}
			terms[name] = append(terms[name], time.Since(t0))
		}
	}
	return nil
}
