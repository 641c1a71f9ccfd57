package containerd

import (
	"testing"

	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
)

// The probes run apart from the rentals: a tenant whose instance has the
// probe's container ID keeps its container through both probes, and the
// memlock probe's answer is what runc does here (this machine's runc may
// lack CAP_SYS_RESOURCE: then no, like the agent's own capabilities say),
// leaving nothing in the probes' namespace.
func TestProbesLeaveTenantsAlone(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns := testNamespace(t)
	r := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())
	if _, err := r.Start(ctx(t), payloadSpec(probeID, "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	if err := r.be.runProbe(); err != nil {
		t.Fatalf("runtime probe: %v", err)
	}
	raise, err := r.be.probeRaise(ctx(t))
	if err != nil {
		t.Fatalf("memlock probe: %v", err)
	}
	if want := backend.CanRaiseRlimits(); raise != want {
		t.Errorf("memlock probe says %v; the agent's CAP_SYS_RESOURCE says %v on this host", raise, want)
	}
	// A limit lowered, which needs no capability, passes the same probe:
	// its answer is the limit's, not the probe's.
	if err := r.be.probeTask(ctx(t), oci.WithRlimit(&specs.POSIXRlimit{Type: "RLIMIT_MEMLOCK", Hard: 64 << 10, Soft: 64 << 10})); err != nil {
		t.Errorf("probe with a lowered memlock: %v", err)
	}
	inst, err := r.Get(ctx(t), probeID)
	if err != nil || inst.Status != runtime.StatusRunning {
		t.Fatalf("the tenant named %s after the probes: %+v %v", probeID, inst, err)
	}
	cl, cctx := rawClient(t, daemon.Address, probeNamespace)
	if left, err := cl.Containers(cctx); err != nil || len(left) != 0 {
		t.Fatalf("left in namespace %s: %d containers (%v)", probeNamespace, len(left), err)
	}
}
