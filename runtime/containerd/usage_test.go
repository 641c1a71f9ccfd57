package containerd

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/usage"
)

// A rental's usage never goes back across a restart of containerd: the
// task's cgroup outlives the daemon, and the Meter reads on from it.
func TestUsageAcrossContainerdRestart(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	own, err := testenv.StartContainerd(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { own.Close() })
	rec := conformance.NewRecorder()
	r := newRuntime(t, own.Address, "rentals", rec)
	rec.WaitFor(t, "", events.TypeRuntimeConnected, 10*time.Second)
	inst, err := r.Start(ctx(t), payloadSpec("usage-spin", "spin", "sleep", "inf"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := usage.NewMeter(usage.Options{Dir: filepath.Join(t.TempDir(), "usage"), Sampler: r.be})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	before := m.Observe(ctx(t), inst)
	if before.CPUSeconds <= 0 || before.MemoryMaxBytes == 0 {
		t.Fatalf("nothing metered: %+v", before)
	}
	if err := own.Stop(); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, "", events.TypeRuntimeDisconnected, 10*time.Second)
	if err := own.Start(); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, "", events.TypeRuntimeConnected, 20*time.Second)
	var after usage.Usage
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if after = m.Observe(ctx(t), inst); after.CPUSeconds > before.CPUSeconds {
			break
		}
	}
	if after.CPUSeconds <= before.CPUSeconds || after.MemoryMaxBytes < before.MemoryMaxBytes {
		t.Fatalf("usage after containerd's restart %+v, before %+v: want CPU time grown, nothing gone back", after, before)
	}
	if err := r.Terminate(ctx(t), inst.ID, time.Second); err != nil {
		t.Fatal(err)
	}
}
