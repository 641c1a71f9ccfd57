package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	containerdclient "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	ctrd "github.com/host-agent/host-agent/runtime/containerd"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/server/reporter"
)

// Concurrent is one burst of simultaneous starts.
type Concurrent struct {
	Starts   int     `json:"starts"`
	GPUs     bool    `json:"gpu"`
	Side     string  `json:"side"`
	WallMS   float64 `json:"wall_ms"`
	Failures int     `json:"failures"`
	// FirstError is the first failure's message, if any.
	FirstError string `json:"first_error,omitempty"`
	// TerminateFailures are the terminates of the burst's rentals (all at
	// once, not timed) that failed; FirstTerminateError says why.
	TerminateFailures   int    `json:"terminate_failures"`
	FirstTerminateError string `json:"first_terminate_error,omitempty"`
}

// Footprint is the agent process's memory and goroutines at three points.
type Footprint struct {
	IdleRSSMB           float64   `json:"idle_rss_mb"`
	WithInstancesRSSMB  float64   `json:"with_instances_rss_mb"`
	AfterCyclesRSSMB    float64   `json:"after_cycles_rss_mb"`
	Cycles              int       `json:"cycles"`
	RSSDuringCyclesMB   []float64 `json:"rss_during_cycles_mb"`
	IdleGoroutines      int       `json:"idle_goroutines"`
	WithInstancesGorout int       `json:"with_instances_goroutines"`
	AfterCyclesGorout   int       `json:"after_cycles_goroutines"`
	CycleFailures       int       `json:"cycle_failures"`
}

// Heartbeat is the size of the heartbeat the agent sent to the central
// server.
type Heartbeat struct {
	GPUs      int `json:"gpus"`
	Instances int `json:"instances"`
	Bytes     int `json:"bytes"`
}

// rssMB reads a process's resident set size.
func rssMB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// goroutines reads the agent's goroutine count from its profile endpoint.
// The bench's idle keep-alive connections are closed first: each holds a
// goroutine in the agent's HTTP server.
func (a *agentProc) goroutines(ctx context.Context) (int, error) {
	a.client.CloseIdleConnections()
	time.Sleep(100 * time.Millisecond)
	b, err := a.get(ctx, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	// "goroutine profile: total 42"
	var n int
	if _, err := fmt.Sscanf(line, "goroutine profile: total %d", &n); err != nil {
		return 0, fmt.Errorf("goroutine profile %q: %w", line, err)
	}
	return n, nil
}

// settle lets the agent's memory and goroutines come to rest: the Go
// runtime returns freed memory to the system only after a while.
func settle() { time.Sleep(3 * time.Second) }

// central is a fake central server: it accepts every registration and
// heartbeat and keeps the last heartbeat's size.
type central struct {
	*httptest.Server
	mu   sync.Mutex
	last Heartbeat
	at   time.Time
}

func newCentral() *central {
	c := &central{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if strings.HasSuffix(r.URL.Path, "/heartbeat") {
			var hb reporter.HeartbeatRequest
			if json.Unmarshal(b, &hb) == nil {
				c.mu.Lock()
				c.last = Heartbeat{GPUs: len(hb.GPUUsage), Instances: len(hb.Instances), Bytes: len(b)}
				c.at = time.Now()
				c.mu.Unlock()
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	}))
	return c
}

// heartbeatAfter waits for a heartbeat sent after t.
func (c *central) heartbeatAfter(t time.Time) (Heartbeat, error) {
	for deadline := time.Now().Add(10 * heartbeatEvery); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		c.mu.Lock()
		hb, at := c.last, c.at
		c.mu.Unlock()
		if at.After(t) {
			return hb, nil
		}
	}
	return Heartbeat{}, fmt.Errorf("no heartbeat within %s", 10*heartbeatEvery)
}

// wsFollower receives the agent's /ws events and notes when each instance's
// exit arrived.
type wsFollower struct {
	conn   *websocket.Conn
	mu     sync.Mutex
	exited map[string]time.Time
}

func (a *agentProc) followEvents(ctx context.Context) (*wsFollower, error) {
	url := "ws" + strings.TrimPrefix(a.base, "http") + "/ws"
	conn, _, err := websocket.DefaultDialer.DialContext(ctx, url, http.Header{"Authorization": {"Bearer " + benchToken}})
	if err != nil {
		return nil, fmt.Errorf("dial /ws: %w", err)
	}
	f := &wsFollower{conn: conn, exited: map[string]time.Time{}}
	go func() {
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				return
			}
			now := time.Now()
			var ev events.Event
			if json.Unmarshal(msg, &ev) == nil && ev.Type == events.TypeInstanceExited {
				f.mu.Lock()
				f.exited[ev.InstanceID] = now
				f.mu.Unlock()
			}
		}
	}()
	return f, nil
}

func (f *wsFollower) waitExit(id string, timeout time.Duration) (time.Time, error) {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		f.mu.Lock()
		at, ok := f.exited[id]
		f.mu.Unlock()
		if ok {
			return at, nil
		}
	}
	return time.Time{}, fmt.Errorf("no %s event for %s on /ws within %s", events.TypeInstanceExited, id, timeout)
}

// measureExitLatency starts n rentals through the agent, kills each task
// from outside the agent (as an OOM kill or a crash would end it) and
// times containerd's exit time to the event's arrival on /ws.
func measureExitLatency(ctx context.Context, a *agentProc, address, image string, n int) (Stat, error) {
	f, err := a.followEvents(ctx)
	if err != nil {
		return Stat{}, err
	}
	defer f.conn.Close()
	cl, err := containerdclient.New(address)
	if err != nil {
		return Stat{}, err
	}
	defer cl.Close()
	cctx := namespaces.WithNamespace(ctx, "rentals")
	var lat []time.Duration
	for i := range n {
		id := fmt.Sprintf("exit-%d", i)
		if err := a.start(ctx, id, image, 0); err != nil {
			return Stat{}, err
		}
		c, err := cl.LoadContainer(cctx, id)
		if err != nil {
			return Stat{}, err
		}
		task, err := c.Task(cctx, nil)
		if err != nil {
			return Stat{}, err
		}
		exitC, err := task.Wait(cctx)
		if err != nil {
			return Stat{}, err
		}
		if err := task.Kill(cctx, syscall.SIGKILL); err != nil {
			return Stat{}, err
		}
		st := <-exitC
		got, err := f.waitExit(id, 10*time.Second)
		if err != nil {
			return Stat{}, err
		}
		lat = append(lat, got.Sub(st.ExitTime()))
		if err := a.terminate(ctx, id); err != nil {
			return Stat{}, err
		}
	}
	return summarize(lat), nil
}

// burst starts n rentals at once through start and reports the wall time
// until every start answered, then terminates the started ones.
func burst(ctx context.Context, n int, gpus bool, sideName string, start func(ctx context.Context, i int) error, terminate func(ctx context.Context, i int) error) (Concurrent, error) {
	res := Concurrent{Starts: n, GPUs: gpus, Side: sideName}
	ok := make([]bool, n)
	var failures atomic.Int64
	var firstErr sync.Once
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range n {
		wg.Go(func() {
			if err := start(ctx, i); err != nil {
				failures.Add(1)
				firstErr.Do(func() { res.FirstError = err.Error() })
				return
			}
			ok[i] = true
		})
	}
	wg.Wait()
	res.WallMS = float64(time.Since(t0)) / float64(time.Millisecond)
	res.Failures = int(failures.Load())
	var termFailures atomic.Int64
	var firstTermErr sync.Once
	for i := range n {
		if !ok[i] {
			continue
		}
		wg.Go(func() {
			if err := terminate(ctx, i); err != nil {
				termFailures.Add(1)
				firstTermErr.Do(func() { res.FirstTerminateError = err.Error() })
			}
		})
	}
	wg.Wait()
	res.TerminateFailures = int(termFailures.Load())
	return res, nil
}

// cycles starts and terminates rentals through the agent, parallel at a
// time, and samples the agent's RSS every quarter.
func cycles(ctx context.Context, a *agentProc, image string, total, parallel int, fp *Footprint) {
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	quarter := max(total/4, 1)
	for range parallel {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				id := fmt.Sprintf("cycle-%d", i)
				if err := a.start(ctx, id, image, 0); err != nil {
					failed.Add(1)
					continue
				}
				if err := a.terminate(ctx, id); err != nil {
					failed.Add(1)
				}
				if (i+1)%quarter == 0 {
					mu.Lock()
					fp.RSSDuringCyclesMB = append(fp.RSSDuringCyclesMB, rssMB(a.pid()))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	fp.Cycles = total
	fp.CycleFailures = int(failed.Load())
}

// withProfile records the agent's CPU profile while fn runs, when the bench
// was asked for profiles.
// The profile is dir/<name>.pprof.
func (a *agentProc) withProfile(name string, fn func() error) error {
	if a.profileDir == "" {
		return fn()
	}
	_ = a.cmd.Process.Signal(syscall.SIGUSR1)
	time.Sleep(50 * time.Millisecond)
	err := fn()
	_ = a.cmd.Process.Signal(syscall.SIGUSR2)
	time.Sleep(500 * time.Millisecond)
	a.profiles++
	from := filepath.Join(a.profileDir, fmt.Sprintf("cpu-%d.pprof", a.profiles))
	if rerr := os.Rename(from, filepath.Join(a.profileDir, name+".pprof")); rerr != nil && err == nil {
		err = fmt.Errorf("profile %s: %w", name, rerr)
	}
	return err
}

// CallStat is one containerd method's share of a start and terminate.
type CallStat struct {
	Calls float64 `json:"calls_per_run"`
	MS    float64 `json:"ms_per_run"`
}

// callTotals reads the count and the summed seconds of each method's calls
// from CallDurationMetric in Prometheus's text format.
func callTotals(text string) map[string]CallStat {
	out := map[string]CallStat{}
	for _, line := range strings.Split(text, "\n") {
		name, rest, ok := strings.Cut(line, "{")
		if !ok || !strings.HasPrefix(name, ctrd.CallDurationMetric+"_") {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		_, method, ok := strings.Cut(labels, `method="`)
		if !ok {
			continue
		}
		method, _, _ = strings.Cut(method, `"`)
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		s := out[method]
		switch strings.TrimPrefix(name, ctrd.CallDurationMetric) {
		case "_count":
			s.Calls += v
		case "_sum":
			s.MS += v * 1000
		}
		out[method] = s
	}
	return out
}

// perRun is the calls between two totals, per run.
func perRun(before, after map[string]CallStat, runs int) map[string]CallStat {
	out := map[string]CallStat{}
	for m, a := range after {
		b := before[m]
		if d := (CallStat{Calls: (a.Calls - b.Calls) / float64(runs), MS: (a.MS - b.MS) / float64(runs)}); d.Calls > 0 {
			out[m] = d
		}
	}
	return out
}

// metricsText reads the agent's GET /metrics.
func (a *agentProc) metricsText(ctx context.Context) (string, error) {
	b, err := a.get(ctx, "/metrics")
	return string(b), err
}

// metricsText renders the raw client's call histogram as GET /metrics would.
func (d *directSide) metricsText() string {
	reg := prometheus.NewRegistry()
	reg.MustRegister(d.calls)
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}
