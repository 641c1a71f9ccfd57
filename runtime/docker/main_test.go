package docker

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/conformance"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/testenv"
)

// The daemons of this package's integration tests: one private containerd
// and, on it, Debian's dockerd 20.10 (API 1.41, the nvidia driver through a
// stand-in hook) and moby's current dockerd (CDI).
var (
	containerd *testenv.Containerd
	dockerds   = map[string]*testenv.Dockerd{}
	testReg    *testenv.Registry
	payloadRef string
	setupErr   string
)

// Flavours of dockerd under test.
const (
	debian = "dockerd-20.10"
	moby   = "dockerd-moby"
)

var integrationBinaries = []string{"containerd", "containerd-shim-runc-v2", "runc"}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if reason := testenv.Missing(integrationBinaries...); reason != "" {
		setupErr = reason
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "ha-dk-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	containerd, err = testenv.StartContainerd(dir + "/ctd")
	if err != nil {
		fmt.Fprintln(os.Stderr, "start containerd:", err)
		return 1
	}
	defer containerd.Close()
	bins := map[string]func() (string, error){
		debian: func() (string, error) {
			if b := testenv.DebianDockerd(); b != "" {
				return b, nil
			}
			return "", fmt.Errorf("Debian's dockerd (docker.io) is not installed")
		},
		moby: testenv.MobyDockerd,
	}
	for name, bin := range bins {
		b, err := bin()
		if err != nil {
			setupErr += name + ": " + err.Error() + "; "
			continue
		}
		d, err := testenv.StartDockerd(dir+"/"+strings.TrimPrefix(name, "dockerd-"), testenv.DockerdOptions{
			Bin: b, Containerd: containerd.Address, CDI: name == moby, NvidiaHook: name == debian})
		if err != nil {
			fmt.Fprintf(os.Stderr, "start %s: %v\n", name, err)
			return 1
		}
		defer d.Close()
		dockerds[name] = d
	}
	testReg = testenv.StartRegistry()
	defer testReg.Close()
	payloadRef, err = testReg.PushPayload("payload:latest")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// needDockerd returns the named dockerd, or skips (fails under
// HOST_AGENT_INTEGRATION=require) when it is not there.
func needDockerd(t *testing.T, name string) *testenv.Dockerd {
	t.Helper()
	testenv.Require(t, integrationBinaries...)
	d := dockerds[name]
	if d == nil {
		if os.Getenv(testenv.RequireEnv) == "require" {
			t.Fatalf("%s did not start: %s", name, setupErr)
		}
		t.Skipf("%s not available: %s", name, setupErr)
	}
	return d
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

func (s *scope) open(t *testing.T, pub events.Publisher) *Runtime {
	t.Helper()
	r, err := New(Options{Host: s.d.Host, AgentID: "conformance", StateDir: s.stateDir, Events: pub,
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
	if gpus != nil && s.d.CDIDir != "" {
		gpus.WriteSpec(t, s.d.CDIDir, "nvidia.json")
	}
	return s.open(t, pub)
}

// GPUsAskedFor implements conformance.GPUVerifier where the daemon has no
// CDI: the UUIDs dockerd handed the NVIDIA hook for the container.
func (s *scope) GPUsAskedFor(t *testing.T, inst runtime.Instance) []string {
	rec := s.d.HookRecord()[inst.ContainerID]
	var out []string
	for _, kv := range strings.Fields(rec) {
		_, v, _ := strings.Cut(kv, "=")
		for _, u := range strings.Split(v, ",") {
			if u != "" && !contains(out, u) {
				out = append(out, u)
			}
		}
	}
	t.Logf("NVIDIA hook was run with %q", rec)
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// cdiScope hides GPUsAskedFor: on a CDI daemon the container itself shows
// its devices.
type cdiScope struct{ s *scope }

func (c cdiScope) Open(t *testing.T, pub events.Publisher, gpus *conformance.GPUHost) runtime.Runtime {
	return c.s.Open(t, pub, gpus)
}

func TestConformance(t *testing.T) {
	for _, name := range []string{debian, moby} {
		t.Run(name, func(t *testing.T) {
			d := needDockerd(t, name)
			conformance.Run(t, conformance.Harness{
				Name: name, Registry: testReg, Image: payloadRef,
				NewScope: func(t *testing.T) conformance.Scope {
					if d.CDIDir != "" {
						return cdiScope{newScope(t, d)}
					}
					return newScope(t, d)
				},
			})
		})
	}
}
