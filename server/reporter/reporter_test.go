package reporter

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
)

var started = time.Date(2025, 1, 2, 1, 0, 0, 0, time.UTC)

// testInstances are a running instance holding a GPU and an exited one.
func testInstances() []runtime.Instance {
	return []runtime.Instance{
		{ID: "a", ContainerID: "a", Image: "registry.example/llm:1", Status: runtime.StatusRunning,
			StartedAt: started, SpecHash: "hash-a"},
		{ID: "b", ContainerID: "b", Image: "registry.example/job:2", Status: runtime.StatusExited,
			ExitCode: intp(137), StartedAt: started, FinishedAt: started.Add(time.Hour)},
	}
}

func byID(hb HeartbeatRequest) map[string]InstanceState {
	out := map[string]InstanceState{}
	for _, s := range hb.Instances {
		out[s.InstanceID] = s
	}
	return out
}

func kinds(calls []call) []string {
	var out []string
	for _, c := range calls {
		out = append(out, c.Kind)
	}
	return out
}

func TestRegistrationThenHeartbeats(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, testInstances()...)
	h.gpus.update(func(g []gpu.GPU) []gpu.GPU { g[0].HeldBy = "a"; return g })
	waits := h.run(h.options(), h.heartbeatsAtLeast(2))

	calls := h.server.recorded()
	if got := kinds(calls); !slices.Equal(got, []string{"register", "heartbeat", "heartbeat"}) {
		t.Fatalf("calls = %v, want a registration then heartbeats", got)
	}
	for _, c := range calls {
		for k, want := range map[string]string{
			"Authorization": "Bearer " + testToken,
			"Content-Type":  "application/json",
			"User-Agent":    "host-agent/" + testVersion,
		} {
			if got := c.Header.Get(k); got != want {
				t.Errorf("%s %s header = %q, want %q", c.Kind, k, got, want)
			}
		}
	}
	for _, w := range waits {
		if w != 15*time.Second {
			t.Errorf("wait between heartbeats = %v, want the 15s interval", w)
		}
	}

	reg := calls[0].register(t)
	host := reg.Host
	if reg.Reason != ReasonStart {
		t.Errorf("reason = %q, want %q", reg.Reason, ReasonStart)
	}
	wantHost, _ := os.Hostname()
	if host.AgentID != testAgentID || host.AgentVersion != testVersion || host.Hostname != wantHost {
		t.Errorf("identity = %q %q %q, want %q %q %q", host.AgentID, host.AgentVersion, host.Hostname,
			testAgentID, testVersion, wantHost)
	}
	if want := procMemTotal(t); host.Memory.TotalBytes != want {
		t.Errorf("memory total = %d, want /proc/meminfo's %d", host.Memory.TotalBytes, want)
	}
	if n := host.CPU.Threads; n != goruntime.NumCPU() && n != procProcessors(t) {
		t.Errorf("threads = %d, want NumCPU %d or cpuinfo's %d", n, goruntime.NumCPU(), procProcessors(t))
	}
	if host.Runtime != (RuntimeInfo{Name: "containerd", Version: "v2.4.2", Namespace: "rentals"}) {
		t.Errorf("runtime = %+v", host.Runtime)
	}
	if !host.CDIAvailable || host.PublicURL != "https://host-1.example.net:8080" {
		t.Errorf("cdi = %v, public url = %q", host.CDIAvailable, host.PublicURL)
	}
	if len(host.GPUs) != 2 || host.GPUs[0].UUID != "GPU-a" || host.GPUs[1].UUID != "GPU-b" ||
		host.DriverVersion != "550.54.15" || host.CUDAVersion != "12.4" {
		t.Errorf("gpus = %+v driver %q cuda %q", host.GPUs, host.DriverVersion, host.CUDAVersion)
	}
	if host.Disk.TotalBytes == 0 || host.Disk.Path != filepath.Dir(filepath.Dir(filepath.Dir(h.dataDir))) {
		t.Errorf("disk = %+v, want the nearest existing parent of the data directory measured", host.Disk)
	}

	hb := calls[1].heartbeat(t)
	if hb.AgentID != testAgentID || hb.InventoryFingerprint != reg.InventoryFingerprint {
		t.Errorf("heartbeat agent %q fingerprint %q, registered %q", hb.AgentID, hb.InventoryFingerprint, reg.InventoryFingerprint)
	}
	got := byID(hb)
	a, b := got["a"], got["b"]
	if len(got) != 2 || a.Status != "running" || a.ExitCode != nil || a.Image != "registry.example/llm:1" ||
		a.StartedAt == nil || !a.StartedAt.Equal(started) || a.FinishedAt != nil {
		t.Errorf("instance a = %+v", a)
	}
	if !slices.Equal(a.GPUs, []GPURef{{Index: 0, UUID: "GPU-a"}}) {
		t.Errorf("a's gpus = %+v, want GPU 0", a.GPUs)
	}
	if b.Status != "exited" || b.ExitCode == nil || *b.ExitCode != 137 || b.FinishedAt == nil || b.GPUs == nil {
		t.Errorf("instance b = %+v", b)
	}
	if len(hb.GPUUsage) != 2 || hb.GPUUsage[1].UtilizationPercent != 91 || hb.GPUUsage[1].TemperatureC != 70 ||
		hb.GPUUsage[1].PowerWatts != 612.5 || hb.GPUUsage[1].MemoryUsedMiB != 1024 {
		t.Errorf("gpu usage = %+v", hb.GPUUsage)
	}
	// Empty lists are [], never null: null means unknown in this protocol.
	for _, field := range []string{`"orphans":[]`, `"missing":[]`, `"gpus":[]`} {
		if !strings.Contains(string(calls[1].Body), field) {
			t.Errorf("heartbeat lacks %s: %s", field, calls[1].Body)
		}
	}
}

func TestHardwareChangeRegistersAgain(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func([]gpu.GPU) []gpu.GPU
		check  func([]gpu.GPU) bool
	}{
		{"GPU turns unhealthy", func(g []gpu.GPU) []gpu.GPU {
			g[1].Healthy, g[1].UnhealthyReason = false, "xid 79"
			return g
		}, func(g []gpu.GPU) bool { return len(g) == 2 && !g[1].Healthy }},
		{"GPU disappears", func(g []gpu.GPU) []gpu.GPU { return g[:1] },
			func(g []gpu.GPU) bool { return len(g) == 1 }},
		{"GPU appears", func(g []gpu.GPU) []gpu.GPU {
			return append(g, gpu.GPU{Index: 2, UUID: "GPU-c", Healthy: true})
		}, func(g []gpu.GPU) bool { return len(g) == 3 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, nil, testInstances()...)
			h.run(h.options(), func(round int) bool {
				if round == 2 {
					h.gpus.update(tc.change)
				}
				return len(h.server.ofKind("heartbeat")) >= 4
			})
			calls := h.server.recorded()
			want := []string{"register", "heartbeat", "heartbeat", "register", "heartbeat", "heartbeat"}
			if got := kinds(calls); !slices.Equal(got, want) {
				t.Fatalf("calls = %v, want %v", got, want)
			}
			first, second := calls[0].register(t), calls[3].register(t)
			if second.Reason != ReasonHardwareChanged || !tc.check(second.Host.GPUs) {
				t.Errorf("second registration: reason %q, gpus %+v", second.Reason, second.Host.GPUs)
			}
			if first.InventoryFingerprint == second.InventoryFingerprint {
				t.Error("fingerprint did not change")
			}
			if hb := calls[4].heartbeat(t); hb.InventoryFingerprint != second.InventoryFingerprint {
				t.Errorf("heartbeat fingerprint %q, registered %q", hb.InventoryFingerprint, second.InventoryFingerprint)
			}
		})
	}
}

func TestRestartedAgentRegistersAgainWithTheSameInstances(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, testInstances()...)
	h.run(h.options(), h.heartbeatsAtLeast(1))
	h.run(h.options(), h.heartbeatsAtLeast(2))

	calls := h.server.recorded()
	if got := kinds(calls); !slices.Equal(got, []string{"register", "heartbeat", "register", "heartbeat"}) {
		t.Fatalf("calls = %v", got)
	}
	if reg := calls[2].register(t); reg.Reason != ReasonStart {
		t.Errorf("reason after restart = %q", reg.Reason)
	}
	before, after := calls[1].heartbeat(t), calls[3].heartbeat(t)
	if len(after.Instances) != 2 || !slices.EqualFunc(before.Instances, after.Instances, sameState) {
		t.Errorf("instances after restart = %+v, before %+v", after.Instances, before.Instances)
	}
	if got := h.rt.terminateCalls(); len(got) != 0 {
		t.Errorf("restart terminated %v", got)
	}
}

func sameState(a, b InstanceState) bool {
	return a.InstanceID == b.InstanceID && a.Status == b.Status && (a.ExitCode == nil) == (b.ExitCode == nil) &&
		(a.ExitCode == nil || *a.ExitCode == *b.ExitCode) && slices.Equal(a.GPUs, b.GPUs)
}

func TestServerAsksForRegistration(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		answer answer
		reason string
	}{
		{"404 to a heartbeat", answer{status: http.StatusNotFound}, ReasonUnknownAgent},
		{"reregister", answer{status: http.StatusOK, body: `{"reregister":true}`}, ReasonServerRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, func(n int, _ string) answer {
				if n == 1 {
					return tc.answer
				}
				return answerOK
			}, testInstances()...)
			h.run(h.options(), func(round int) bool { return round == 2 })
			calls := h.server.recorded()
			if got := kinds(calls); !slices.Equal(got, []string{"register", "heartbeat", "register", "heartbeat"}) {
				t.Fatalf("calls = %v", got)
			}
			if reg := calls[2].register(t); reg.Reason != tc.reason {
				t.Errorf("reason = %q, want %q", reg.Reason, tc.reason)
			}
		})
	}
}

func TestStandaloneReportsNothing(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	r, err := New(Options{Runtime: newFakeRuntime(), Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if r.Enabled() {
		t.Fatal("a reporter without a server URL is enabled")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if n := logs.count("API_SERVER_URL is not set"); n != 1 {
		t.Errorf("standalone said so %d times, want once", n)
	}
	rep, err := r.Collect(context.Background())
	if err != nil || rep.Memory.TotalBytes == 0 || len(rep.GPUs) != 0 || rep.GPUs == nil {
		t.Errorf("Collect on a standalone reporter = %+v, %v", rep, err)
	}
	var nilReporter *Reporter
	if nilReporter.Enabled() {
		t.Error("nil reporter enabled")
	}
}

func TestNewRejectsIncompleteOptions(t *testing.T) {
	t.Parallel()
	rt := newFakeRuntime()
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"no runtime", Options{}},
		{"not a URL", Options{Runtime: rt, ServerURL: "api.example.com", AgentID: "a", Token: "t"}},
		{"no agent id", Options{Runtime: rt, ServerURL: "https://api.example.com", Token: "t"}},
		{"no token", Options{Runtime: rt, ServerURL: "https://api.example.com", AgentID: "a"}},
	} {
		if _, err := New(tc.opts); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: err = %v, want InvalidArgument", tc.name, err)
		}
	}
}

func TestEndpointEscapesTheAgentID(t *testing.T) {
	t.Parallel()
	r, err := New(Options{Runtime: newFakeRuntime(), ServerURL: "https://api.example.com/base/", AgentID: "rack 7/h1", Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.endpoint(HeartbeatPath), "https://api.example.com/base/api/v1/agents/rack%207%2Fh1/heartbeat"; got != want {
		t.Errorf("endpoint = %q, want %q", got, want)
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		op   string
		err  error
		want failure
	}{
		{"register", errors.New("dial tcp: connection refused"), failOutage},
		{"register", &callError{op: "register", err: context.DeadlineExceeded}, failOutage},
		{"register", &callError{status: 500}, failOutage},
		{"heartbeat", &callError{status: 502}, failOutage},
		{"heartbeat", &callError{status: 429}, failOutage},
		{"heartbeat", &callError{status: 408}, failOutage},
		{"heartbeat", &callError{status: 401}, failAuth},
		{"register", &callError{status: 403}, failAuth},
		{"heartbeat", &callError{status: 404}, failUnknownAgent},
		{"register", &callError{status: 404}, failRejected},
		{"register", &callError{status: 422}, failRejected},
	} {
		if got := classify(tc.op, tc.err); got != tc.want {
			t.Errorf("classify(%s, %v) = %v, want %v", tc.op, tc.err, got, tc.want)
		}
	}
}

func TestNilInventoryIsAHostWithoutGPUs(t *testing.T) {
	t.Parallel()
	var inv *gpu.Inventory // what a caller holds when it skipped gpu.Open
	r, err := New(Options{Runtime: newFakeRuntime(), GPUs: inv})
	if err != nil {
		t.Fatal(err)
	}
	if rep, _ := r.Collect(context.Background()); len(rep.GPUs) != 0 || rep.DriverVersion != "" {
		t.Errorf("report of a nil inventory = %+v", rep)
	}
}
