package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/share"
	"github.com/host-agent/host-agent/server"
	"github.com/host-agent/host-agent/server/reporter"
)

const (
	token        = "agent-test-token-0123456789abcdef"
	metricsToken = "agent-test-metrics-0123456789abcd"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mockInventory(t *testing.T) *gpu.Inventory {
	t.Helper()
	inv, err := gpu.Open(dgxa100.New(), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inv.Close() })
	return inv
}

// sysWithOneNode is a sysfs root with one NUMA node of two CPUs.
func sysWithOneNode(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	node := filepath.Join(root, "devices/system/node/node0")
	if err := os.MkdirAll(node, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"cpulist": "0-1\n", "meminfo": "Node 0 MemTotal:       8388608 kB\n"} {
		if err := os.WriteFile(filepath.Join(node, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestKindsInOrder: every program's starts take the same kinds, GPUs
// first, host ports only where the agent publishes them.
func TestKindsInOrder(t *testing.T) {
	t.Parallel()
	inv := mockInventory(t)
	sys := sysWithOneNode(t)
	ports := hostport.NewAllocator(hostport.Range{First: 40000, Last: 40010}, nil)
	for _, tt := range []struct {
		name string
		r    Reservations
		want string
	}{
		{"published", Reservations{Ports: ports, PublishPorts: true, NUMAAlign: true, SysRoot: sys}, "gpus resources ports disk numa bandwidth"},
		{"unpublished", Reservations{Ports: ports, NUMAAlign: true, SysRoot: sys}, "gpus resources disk numa bandwidth"},
		{"no NUMA", Reservations{SysRoot: sys}, "gpus resources disk bandwidth"},
		{"disk limits", Reservations{DiskLimits: &disk.Limits{Path: sys}, NUMAAlign: true, SysRoot: sys}, "gpus resources disk numa bandwidth"},
	} {
		kinds, shares, err := Kinds(inv, tt.r, quiet())
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var names []string
		for _, k := range kinds {
			names = append(names, k.Name())
		}
		if got := strings.Join(names, " "); got != tt.want {
			t.Errorf("%s: kinds %q, want %q", tt.name, got, tt.want)
		}
		if _, limited := kinds[2].(*disk.Limits); limited != (tt.r.DiskLimits != nil) {
			t.Errorf("%s: disk kind %T", tt.name, kinds[2])
		}
		if shares == nil || shares.Usage().AllocatableMemoryMB <= 0 {
			t.Errorf("%s: shares %+v", tt.name, shares)
		}
	}
}

// TestShareErrorSaysWhichIsShort: a reserve that leaves nothing for
// rentals is refused, naming memory or CPUs, so that the daemon can name
// the setting.
func TestShareErrorSaysWhichIsShort(t *testing.T) {
	t.Parallel()
	inv := mockInventory(t)
	meminfo := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(meminfo, []byte("MemTotal: 4194304 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		shares ShareOptions
		cpus   bool
	}{
		{ShareOptions{ReservedMemoryMB: 4096}, false},
		{ShareOptions{ReservedCPUs: 4096}, true},
	} {
		_, _, err := Kinds(inv, Reservations{Shares: tt.shares, Meminfo: meminfo}, quiet())
		var se *ShareError
		if !errors.As(err, &se) || se.CPUs != tt.cpus {
			t.Errorf("%+v: %v, want a ShareError with CPUs %v", tt.shares, err, tt.cpus)
		}
	}
}

// fakeBackend is a back end with no containers but those started through
// it; it records the spec each start hands it.
type fakeBackend struct {
	mu      sync.Mutex
	started []runtime.InstanceSpec
	insts   map[string]runtime.Instance
	closed  bool
}

var _ runtime.Runtime = (*fakeBackend)(nil)

func (f *fakeBackend) Start(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started = append(f.started, spec)
	inst := runtime.Instance{ID: spec.ID, ContainerID: spec.ID, Image: spec.Image, Status: runtime.StatusRunning, AgentLabels: spec.ReservedLabels}
	f.insts[spec.ID] = inst
	return inst, nil
}

func (f *fakeBackend) Terminate(_ context.Context, id string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.insts, id)
	return nil
}

func (f *fakeBackend) Get(_ context.Context, id string) (runtime.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	inst, ok := f.insts[id]
	if !ok {
		return runtime.Instance{}, errdefs.ErrNotFound
	}
	return inst, nil
}

func (f *fakeBackend) List(context.Context) ([]runtime.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []runtime.Instance
	for _, inst := range f.insts {
		out = append(out, inst)
	}
	return out, nil
}

func (f *fakeBackend) Logs(context.Context, string, int) ([]byte, bool, error) {
	return nil, false, nil
}
func (f *fakeBackend) Ping(context.Context) error { return nil }
func (f *fakeBackend) Info(context.Context) (runtime.Info, error) {
	return runtime.Info{Name: "fake", Version: "1"}, nil
}

func (f *fakeBackend) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func call(t *testing.T, method, url, body string) (int, string) {
	return callWith(t, token, method, url, body)
}

func callWith(t *testing.T, token, method, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestNewServesTheAgentItBuilt: the agent New builds serves the API over
// the lifecycle with every reservation kind (a start through the API
// reaches the back end with its share of the host reserved and recorded),
// serves the pull timer's and the disk's metrics, stops its loops when its
// context ends and closes the back end on Close.
func TestNewServesTheAgentItBuilt(t *testing.T) {
	t.Parallel()
	be := &fakeBackend{insts: map[string]runtime.Instance{}}
	ev := NewEvents(16)
	a, err := New(context.Background(), Options{
		Logger:         quiet(),
		Events:         ev,
		Inventory:      mockInventory(t),
		Backend:        be,
		Reservations:   Reservations{DiskPath: t.TempDir(), DiskReserveBytes: 1, NUMAAlign: true, SysRoot: sysWithOneNode(t)},
		RestoreTimeout: time.Second,
		Reporter:       &reporter.Options{AgentID: "agent-test"},
		Server:         &server.Options{RuntimeName: "fake", Token: token, AgentID: "agent-test", MetricsToken: metricsToken},
	})
	if err != nil {
		t.Fatal(err)
	}
	if a.Server == nil || a.Reporter == nil || a.Shares == nil || a.Lifecycle == nil {
		t.Fatalf("agent %+v: a part is missing", a)
	}
	base, stop := serve(t, a)

	if code, body := call(t, http.MethodPost, base+"/start_instance", `{"instance_id":"cpu-1","image":"busybox"}`); code != http.StatusOK {
		t.Fatalf("start: %d %s", code, body)
	}
	be.mu.Lock()
	started := append([]runtime.InstanceSpec(nil), be.started...)
	be.mu.Unlock()
	if len(started) != 1 {
		t.Fatalf("the back end saw %d starts, want 1", len(started))
	}
	if s := started[0]; s.Limits.MemoryMB <= 0 || s.ReservedLabels[share.LabelMemoryMB] == "" {
		t.Errorf("the start reached the back end without its share: limits %+v, labels %v", s.Limits, s.ReservedLabels)
	}
	if u := a.Shares.Usage(); u.Instances != 1 {
		t.Errorf("shares hold %d rentals, want 1", u.Instances)
	}
	code, metrics := callWith(t, metricsToken, http.MethodGet, base+"/metrics", "")
	for _, name := range []string{"host_agent_image_pull_duration_seconds", "host_agent_disk_free_bytes", "host_agent_disk_reserve_bytes"} {
		if code != http.StatusOK || !strings.Contains(metrics, name) {
			t.Errorf("GET /metrics (%d) has no %s", code, name)
		}
	}

	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if !be.closed {
		t.Error("Close left the back end open")
	}
}

// serve runs a on a listener of its own on 127.0.0.1 and returns its base
// URL and stop, which ends Run and returns its error.
func serve(t *testing.T, a *Agent) (base string, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx, ln) }()
	return "http://" + ln.Addr().String(), func() error {
		cancel()
		select {
		case err := <-ran:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after its context ended")
			return nil
		}
	}
}
