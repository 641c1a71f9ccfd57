package containerd

import (
	"syscall"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime/events"
)

// One instance's exit recording stuck on a slow containerd call must not
// hold up the others: with one lock for all, 200 rentals ending at once
// queued behind each other until their recordings timed out, and those
// exits were never reported.
func TestExitRecordingsDoNotWaitForEachOther(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	for _, id := range []string{"slow", "quick"} {
		if _, err := r.Start(ctx(t), payloadSpec(id, "sleep", "inf")); err != nil {
			t.Fatal(err)
		}
	}
	// A recording for "slow" is in progress and does not finish.
	unlock := r.be.exits.Lock("slow")
	cl, cctx := rawClient(t, daemon.Address, ns)
	c, err := cl.LoadContainer(cctx, "quick")
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Task(cctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(cctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e := rec.WaitFor(t, "quick", events.TypeInstanceExited, 10*time.Second)
	unlock()
	if e.ExitCode == nil || *e.ExitCode != 137 {
		t.Fatalf("quick's exit = %+v, want code 137", e)
	}
	for _, id := range []string{"slow", "quick"} {
		if err := r.Terminate(ctx(t), id, 0); err != nil {
			t.Fatal(err)
		}
	}
	if n := rec.Count("quick", events.TypeInstanceExited); n != 1 {
		t.Fatalf("quick's exit reported %d times", n)
	}
}
