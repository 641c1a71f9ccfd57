package containerd

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// TestConformance runs the suite every back end passes, on the shared
// private containerd.
func TestConformance(t *testing.T) {
	needDaemon(t)
	conformance.Run(t, conformance.Harness{
		Name:     "containerd",
		Registry: registry,
		Image:    payloadRef,
		NewScope: func(t *testing.T) conformance.Scope {
			return &ctdScope{ns: testNamespace(t), logDir: t.TempDir()}
		},
	})
}

// ctdScope is one test's namespace: back ends opened on it see the same
// instances, as the agent does across its restarts.
type ctdScope struct {
	ns, logDir string
}

func (s *ctdScope) options(pub events.Publisher) Options {
	return Options{Address: daemon.Address, Namespace: s.ns, AgentID: "conformance", LogDir: s.logDir, Events: pub,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// OpenNetworked implements conformance.Networker with a CNI network of the
// test's own; the rentals' addresses are in their labels. Ports are
// published on every address of the host.
func (s *ctdScope) OpenNetworked(t *testing.T, pub events.Publisher, blocked []netip.Prefix, _ netip.Addr, dns ...netip.Addr) (runtime.Runtime, conformance.NetInfo) {
	t.Helper()
	needPlugins(t)
	tn := newTestNetwork(t, blocked, dns...)
	opts := s.options(pub)
	opts.Network = tn.net
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, conformance.NetInfo{Subnet: tn.cfg.Subnet, AddrOf: func(t *testing.T, inst runtime.Instance) netip.Addr {
		a, err := netip.ParseAddr(inst.AgentLabels[runtime.LabelIP])
		if err != nil {
			t.Fatalf("address of %s: %v", inst.ID, err)
		}
		return a
	}, Bridge: tn.cfg.Bridge}
}

func (s *ctdScope) Open(t *testing.T, pub events.Publisher, gpus *conformance.GPUHost) runtime.Runtime {
	t.Helper()
	opts := s.options(pub)
	if gpus != nil {
		dir := filepath.Join(t.TempDir(), "cdi")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		gpus.WriteSpec(t, dir, "nvidia.json")
		inj, err := cdi.New(cdi.Config{SpecDirs: []string{dir}, Logger: opts.Logger, DeviceMajors: []int64{conformance.FakeNodeMajor}, Inventory: gpus.Inv})
		if err != nil {
			t.Fatal(err)
		}
		opts.Devices = inj
	}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}
