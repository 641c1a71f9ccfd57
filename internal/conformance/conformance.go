// Package conformance is the one suite of behaviour every back end of
// runtime.Runtime must show under lifecycle.Lifecycle, so that the scheduler
// cannot tell the containerd and Docker back ends apart. Each back end's
// tests call Run with a Harness over real daemons; it is imported by tests
// only.
package conformance

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// Harness is what the suite needs of one back end on real daemons.
type Harness struct {
	// Name names the back end in messages ("containerd", "docker 20.10").
	Name string
	// Registry serves Image, the payload image (testenv).
	Registry *testenv.Registry
	Image    string
	// NewScope prepares a place for one test's instances (a namespace, a
	// state dir) in which back ends are opened, one after another, as the
	// agent would be across restarts.
	NewScope func(t *testing.T) Scope
}

// Scope opens back ends on one test's place.
type Scope interface {
	// Open opens a back end publishing to pub, with GPU injection from
	// gpus when it is not nil. It is closed with the test (or by the
	// test, through the Lifecycle over it).
	Open(t *testing.T, pub events.Publisher, gpus *GPUHost) runtime.Runtime
}

// GPURefuser is implemented by a Scope whose daemon the agent must not
// hand GPUs to (a dockerd without CDI, whose NVIDIA hook injects what the
// agent cannot check): GPUsRefused says why, or "" where GPUs are served.
// There a GPU rental is refused as a failed precondition naming CDI, and
// leaves nothing behind.
type GPURefuser interface {
	GPUsRefused() string
}

// Networker is implemented by every Scope: it opens a back end whose
// rentals are on a network of the test's own (subnet, bridge and rules
// apart from the agent's defaults), with blocked as the blocked egress
// ranges, published ports bound on hostAddr and dns as the rentals'
// resolvers (RENTAL_DNS; none: one no test sends to). The caller holds
// testenv.LockHostNetwork.
type Networker interface {
	OpenNetworked(t *testing.T, pub events.Publisher, blocked []netip.Prefix, hostAddr netip.Addr, dns ...netip.Addr) (runtime.Runtime, NetInfo)
}

// NetInfo is what the network scenario needs to know of a networked back
// end.
type NetInfo struct {
	// Subnet is the rentals' subnet; its first address is the host's on
	// the rentals' bridge.
	Subnet netip.Prefix
	// AddrOf is a running rental's address.
	AddrOf func(t *testing.T, inst runtime.Instance) netip.Addr
	// Bridge is the rentals' bridge device.
	Bridge string
}

// Agent is a back end under a Lifecycle, as cmd/host-agent builds it.
type Agent struct {
	*lifecycle.Lifecycle
	Events *Recorder
}

// open builds an Agent over a freshly opened back end of sc.
func open(t *testing.T, sc Scope, gpus *GPUHost) *Agent {
	t.Helper()
	var kinds []runtime.Admission
	if gpus != nil {
		kinds = append(kinds, gpus.Kind())
	}
	return openWith(t, sc, gpus, kinds)
}

// openWith builds an Agent over a freshly opened back end of sc, whose
// starts make the reservations of kinds.
func openWith(t *testing.T, sc Scope, gpus *GPUHost, kinds []runtime.Admission) *Agent {
	t.Helper()
	rec := NewRecorder()
	be := sc.Open(t, rec, gpus)
	l := lifecycle.New(be, lifecycle.Options{
		Kinds: kinds, Events: rec,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	t.Cleanup(func() { l.Close() })
	if err := l.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &Agent{Lifecycle: l, Events: rec}
}

// Run runs every scenario against h.
func Run(t *testing.T, h Harness) {
	scenarios := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"IdempotentStartAndConflict", testIdempotentStart},
		{"FailedStartLeavesNothing", testFailedStart},
		{"TerminateSemantics", testTerminate},
		{"StateEventsOnce", testStateEventsOnce},
		{"DrainRefusesNewRentals", testDrain},
		{"ExitReportedOnceAcrossAgentRestart", testExitOnce},
		{"StateReadBackAfterAgentRestart", testReadBack},
		{"Logs", testLogs},
		{"FollowLogs", testFollowLogs},
		{"PullProgress", testPullProgress},
		{"PrivateRegistryAuth", testRegistryAuth},
		{"ImagesPrePullInventoryRemove", testImages},
		{"ImagesPrivatePrePull", testImagePrivatePrePull},
		{"OnePullPerImage", testOnePullPerImage},
		{"PrivatePullNotShared", testPrivatePullNotShared},
		{"ResourceLimits", testLimits},
		{"LifecycleLimitsAndUlimits", testEnforcedLimits},
		{"OOMKillReported", testOOM},
		{"DiskLimitWatched", testDiskLimitWatched},
		{"SSHAuthorizedKeysReadOnly", testSSHKeys},
		{"Confinement", testConfinement},
		{"HostileImageLabels", testHostileImageLabels},
		{"HostileWorkdir", testHostileWorkdir},
		{"RealTimePriorityRefused", testRealTimePriority},
		{"GPUsByUUID", testGPUs},
		{"PublishedPortsAndIsolation", testNetwork},
		{"VolumesOutliveRentals", testVolumes},
		{"BandwidthLimit", testBandwidth},
		{"UsageMetered", testUsage},
	}
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) { s.fn(t, h) })
	}
}

// Ctx is a context for one call of a test.
func Ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// Recorder is an events.Publisher that keeps everything for assertions.
type Recorder struct {
	mu   sync.Mutex
	evs  []events.Event
	wake chan struct{}
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{wake: make(chan struct{}, 1)} }

// Publish implements events.Publisher.
func (r *Recorder) Publish(e events.Event) {
	r.mu.Lock()
	e.Seq = uint64(len(r.evs) + 1)
	r.evs = append(r.evs, e)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// All returns every event so far.
func (r *Recorder) All() []events.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]events.Event(nil), r.evs...)
}

// WaitFor waits until an event of type typ for instance id ("" for any)
// has arrived.
func (r *Recorder) WaitFor(t *testing.T, id, typ string, timeout time.Duration) events.Event {
	t.Helper()
	deadline := time.After(timeout)
	for {
		for _, e := range r.All() {
			if e.InstanceID == id && e.Type == typ {
				return e
			}
		}
		select {
		case <-r.wake:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no %s event for %q within %s; got %s", typ, id, timeout, r.Summary())
		}
	}
}

// Count counts the events of type typ for instance id.
func (r *Recorder) Count(id, typ string) int {
	n := 0
	for _, e := range r.All() {
		if e.InstanceID == id && e.Type == typ {
			n++
		}
	}
	return n
}

// Summary lists the events, for failure messages.
func (r *Recorder) Summary() string {
	var b strings.Builder
	for _, e := range r.All() {
		fmt.Fprintf(&b, "\n  %s %s %s", e.Type, e.InstanceID, e.Error)
	}
	return b.String()
}

// waitLogs polls the instance's logs until they contain want.
func waitLogs(t *testing.T, a *Agent, id, want string) string {
	t.Helper()
	var logs string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, _, err := a.Logs(Ctx(t), id, 10000)
		if err == nil {
			if logs = string(b); strings.Contains(logs, want) {
				return logs
			}
		}
	}
	inst, err := a.Get(Ctx(t), id)
	t.Fatalf("logs of %s never showed %q (instance %+v, %v):\n%s", id, want, inst, err, logs)
	return ""
}

// uniqueID makes instance IDs unique per test, so that back ends sharing
// one daemon across tests (Docker) do not mix them up.
func uniqueID(t *testing.T, name string) string {
	s := strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(t.Name()))
	if len(s) > 40 {
		s = s[len(s)-40:]
	}
	return strings.Trim(s, "-._") + "-" + name
}
