package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/network/dockernet"
)

// The daemons of this package's integration tests: one private containerd
// and, on it, Debian's dockerd 20.10 (API 1.41, the nvidia driver through a
// stand-in hook) and moby's current dockerd (CDI); and a registry serving
// the payload image. Each is started by the first test that needs it
// (needDockerd) and stopped by TestMain.
var (
	containerd *testenv.Containerd
	testReg    *testenv.Registry
	payloadRef string
)

// Flavours of dockerd under test.
const (
	debian = "dockerd-20.10"
	moby   = "dockerd-moby"
)

var integrationBinaries = []string{"containerd", "containerd-shim-runc-v2", "runc"}

// sharedDockerd is one flavour's shared dockerd.
type sharedDockerd struct {
	testenv.Fixture
	bin func() (string, error)
	d   *testenv.Dockerd
}

var (
	sharedContainerd = testenv.Fixture{Start: func() (func(), error) {
		dir, err := os.MkdirTemp("", "ha-dk-")
		if err != nil {
			return nil, err
		}
		c, err := testenv.StartContainerd(dir + "/ctd")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("start containerd: %w", err)
		}
		containerd = c
		return func() { c.Close(); os.RemoveAll(dir) }, nil
	}}
	sharedPayload = testenv.Fixture{Start: func() (func(), error) {
		reg := testenv.StartRegistry()
		ref, err := reg.PushPayload("payload:latest")
		if err != nil {
			reg.Close()
			return nil, err
		}
		testReg, payloadRef = reg, ref
		return reg.Close, nil
	}}
	dockerds = map[string]*sharedDockerd{
		debian: {bin: func() (string, error) {
			if b := testenv.DebianDockerd(); b != "" {
				return b, nil
			}
			return "", fmt.Errorf("Debian's dockerd (docker.io) is not installed")
		}},
		moby: {bin: testenv.MobyDockerd},
	}
)

func init() {
	for name, s := range dockerds {
		s.Start = func() (func(), error) {
			b, err := s.bin()
			if err != nil {
				return nil, err
			}
			dir, err := os.MkdirTemp("", "ha-dk-")
			if err != nil {
				return nil, err
			}
			d, err := testenv.StartDockerd(dir+"/"+strings.TrimPrefix(name, "dockerd-"), testenv.DockerdOptions{
				Bin: b, Containerd: containerd.Address, CDI: name == moby, NvidiaHook: name == debian})
			if err != nil {
				os.RemoveAll(dir)
				return nil, fmt.Errorf("start %s: %w", name, err)
			}
			s.d = d
			return func() { d.Close(); os.RemoveAll(dir) }, nil
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, s := range dockerds {
		s.Close()
	}
	sharedContainerd.Close()
	sharedPayload.Close()
	os.Exit(code)
}

// needDockerd returns the named dockerd, or skips (fails under
// HOST_AGENT_INTEGRATION=require) when it cannot run here. On first use it
// starts the shared containerd, that dockerd and the registry serving the
// payload image (testReg, payloadRef).
func needDockerd(t *testing.T, name string) *testenv.Dockerd {
	t.Helper()
	testenv.Require(t, integrationBinaries...)
	s := dockerds[name]
	if _, err := s.bin(); err != nil {
		testenv.Unavailable(t, name+": "+err.Error())
	}
	needContainerd(t)
	s.Need(t)
	needPayload(t)
	return s.d
}

// needContainerd starts, on first use, the shared containerd (containerd).
func needContainerd(t *testing.T) {
	t.Helper()
	testenv.Require(t, integrationBinaries...)
	sharedContainerd.Need(t)
}

// needPayload starts, on first use, the registry serving the payload image
// (testReg, payloadRef).
func needPayload(t *testing.T) {
	t.Helper()
	sharedPayload.Need(t)
}

// scope is one test's state dir on one dockerd: back ends opened on it
// are the agent across its restarts.
type scope struct {
	d        *testenv.Dockerd
	stateDir string
}

func newScope(t *testing.T, d *testenv.Dockerd) *scope {
	return &scope{d: d, stateDir: t.TempDir()}
}

func (s *scope) open(t *testing.T, pub events.Publisher, devices DevicePlanner) *Runtime {
	t.Helper()
	r, err := New(Options{Host: s.d.Host, AgentID: "conformance", StateDir: s.stateDir, Events: pub, Devices: devices,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// Open implements conformance.Scope. GPUs come from the daemon: moby's
// reads the CDI spec from its spec dir, 20.10's asks the (stand-in) NVIDIA
// hook.
func (s *scope) Open(t *testing.T, pub events.Publisher, gpus *conformance.GPUHost) runtime.Runtime {
	var devices DevicePlanner
	if gpus != nil && s.d.CDIDir != "" {
		gpus.WriteSpec(t, s.d.CDIDir, "nvidia.json")
		devices = checkedCDI(t, s.d.CDIDir, gpus)
	}
	return s.open(t, pub, devices)
}

// checkedCDI is the agent's check of the daemon's CDI spec dir, as
// cmd/host-agent builds it over CDI_SPEC_DIRS.
func checkedCDI(t *testing.T, dir string, gpus *conformance.GPUHost) *cdi.Injector {
	t.Helper()
	inj, err := cdi.New(cdi.Config{SpecDirs: []string{dir}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		DeviceMajors: []int64{conformance.FakeNodeMajor}, Inventory: gpus.Inv})
	if err != nil {
		t.Fatal(err)
	}
	return inj
}

// GPUsRefused implements conformance.GPURefuser where the daemon has no
// CDI: its NVIDIA hook would inject what the agent cannot check.
func (s *scope) GPUsRefused() string {
	if s.d.CDIDir == "" {
		return "has no CDI"
	}
	return ""
}

// OpenNetworked implements conformance.Networker: a dockerd of the same
// flavour that manages iptables, as a production one does, and on it the
// agent's Docker network under names of the test's own. Whatever is left
// (containers, the network, Docker's chains on a host that had none) is
// removed when the test ends.
func (s *scope) OpenNetworked(t *testing.T, pub events.Publisher, blocked []netip.Prefix, hostAddr netip.Addr, dns ...netip.Addr) (runtime.Runtime, conformance.NetInfo) {
	t.Helper()
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	tag := hex.EncodeToString(b)
	opts := NetworkOptions{
		Name: "hadc-" + tag, HostAddrs: []netip.Addr{hostAddr},
		Config: dockernet.Config{
			Bridge: "hadc" + tag, ChainPrefix: "HADC" + strings.ToUpper(tag),
			Subnet:        netip.MustParsePrefix(fmt.Sprintf("10.220.%d.0/24", b[0])),
			BlockedEgress: blocked, DNS: dns,
		},
	}
	if !testenv.DockerChainsPresent() {
		t.Cleanup(func() { testenv.RemoveDockerChains(t) })
	}
	dir, err := os.MkdirTemp("", "ha-dc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	o := s.d.Options()
	o.IPTables = true
	d, err := testenv.StartDockerd(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeRulesNaming(opts.Bridge) })
	t.Cleanup(d.Close)
	r, err := New(Options{Host: d.Host, AgentID: "conformance", StateDir: t.TempDir(), Events: pub, Network: &opts,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	t.Cleanup(func() {
		ctx := context.Background()
		if list, err := r.client.ContainerList(ctx, client.ContainerListOptions{All: true}); err == nil {
			for _, c := range list.Items {
				_, _ = r.client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
			}
		}
		if err := r.RemoveNetwork(ctx); err != nil {
			t.Error(err)
		}
	})
	return r, conformance.NetInfo{Subnet: opts.Subnet, AddrOf: func(t *testing.T, inst runtime.Instance) netip.Addr {
		res, err := r.client.ContainerInspect(context.Background(), inst.ContainerID, client.ContainerInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ep := res.Container.NetworkSettings.Networks[opts.Name]
		if ep == nil {
			t.Fatalf("%s is not on network %s", inst.ID, opts.Name)
		}
		return ep.IPAddress
	}, Bridge: opts.Bridge}
}

func TestConformance(t *testing.T) {
	for _, name := range []string{debian, moby} {
		t.Run(name, func(t *testing.T) {
			d := needDockerd(t, name)
			conformance.Run(t, conformance.Harness{
				Name: name, Registry: testReg, Image: payloadRef,
				NewScope: func(t *testing.T) conformance.Scope { return newScope(t, d) },
			})
		})
	}
}
