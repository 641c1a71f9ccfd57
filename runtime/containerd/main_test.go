package containerd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// The shared daemon and image of this package's integration tests, started
// by the first test that needs them (needDaemon); tests that restart
// containerd start their own daemon.
var (
	daemon     *testenv.Containerd
	payloadRef string
	registry   *testenv.Registry
)

var integrationBinaries = []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr"}

var (
	sharedDaemon = testenv.Fixture{Start: func() (func(), error) {
		dir, err := os.MkdirTemp("", "host-agent-ctd-")
		if err != nil {
			return nil, err
		}
		d, err := testenv.StartContainerd(dir)
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("start containerd: %w", err)
		}
		daemon = d
		return func() { d.Close(); os.RemoveAll(dir) }, nil
	}}
	sharedPayload = testenv.Fixture{Start: func() (func(), error) {
		reg := testenv.StartRegistry()
		ref, err := reg.PushPayload("payload:latest")
		if err != nil {
			reg.Close()
			return nil, err
		}
		registry, payloadRef = reg, ref
		return reg.Close, nil
	}}
)

func TestMain(m *testing.M) {
	code := m.Run()
	sharedDaemon.Close()
	sharedPayload.Close()
	os.Exit(code)
}

// needDaemon skips or fails the test when containerd cannot run here, and
// otherwise starts, on first use, the shared daemon (daemon) and the
// registry serving the payload image (registry, payloadRef).
func needDaemon(tb testing.TB) {
	tb.Helper()
	testenv.Require(tb, integrationBinaries...)
	sharedDaemon.Need(tb)
	needPayload(tb)
}

// needPayload starts, on first use, the registry serving the payload image
// (registry, payloadRef), for tests that run their own containerd.
func needPayload(tb testing.TB) {
	tb.Helper()
	sharedPayload.Need(tb)
}

// agent is what cmd/host-agent builds: the containerd back end under the
// lifecycle layer. Tests call it as the server does.
type agent struct {
	*lifecycle.Lifecycle
	be *Runtime
}

func (a *agent) logPath(id string) string { return a.be.logPath(id) }

// newRuntime opens a Runtime on addr in namespace ns under a Lifecycle,
// closed with the test.
func newRuntime(t *testing.T, addr, ns string, pub events.Publisher) *agent {
	t.Helper()
	r, err := New(Options{
		Address:   addr,
		Namespace: ns,
		AgentID:   "test-agent",
		LogDir:    t.TempDir(),
		Events:    pub,
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	return withLifecycle(t, r, pub)
}

// withLifecycle puts a Lifecycle with the given reservation kinds over be,
// closed with the test.
func withLifecycle(t *testing.T, be *Runtime, pub events.Publisher, kinds ...runtime.Admission) *agent {
	t.Helper()
	l := lifecycle.New(be, lifecycle.Options{
		Kinds:  kinds,
		Events: pub,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	t.Cleanup(func() { l.Close() })
	if err := l.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &agent{Lifecycle: l, be: be}
}

// testNamespace gives each test a namespace of its own, so tests run in
// parallel on one daemon without seeing each other.
func testNamespace(t *testing.T) string {
	return "rentals-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
}

// rawClient talks to the daemon directly, as an operator's ctr would.
func rawClient(t *testing.T, addr, ns string) (*containerd.Client, context.Context) {
	t.Helper()
	c, err := containerd.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, namespaces.WithNamespace(context.Background(), ns)
}

func payloadSpec(id string, args ...string) runtime.InstanceSpec {
	return runtime.InstanceSpec{ID: id, Image: payloadRef, Command: args}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}
