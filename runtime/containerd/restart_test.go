package containerd

import (
	"context"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// An agent restart disturbs nothing: running instances keep running and are
// reported by the new agent, an exit that happened while no agent ran is
// reported on start, and only once across further restarts.
func TestAgentRestart(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns := testNamespace(t)
	first := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())
	long, err := first.Start(ctx(t), payloadSpec("long", "sleep", "inf"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Start(ctx(t), payloadSpec("short", "sleep", "1.5", "exit", "3")); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	// While no agent runs, "short" exits.
	cl, cctx := rawClient(t, daemon.Address, ns)
	waitTaskStopped(t, cl, cctx, "short")

	rec := conformance.NewRecorder()
	second := newRuntime(t, daemon.Address, ns, rec)
	e := rec.WaitFor(t, "short", events.TypeInstanceExited, 10*time.Second)
	if e.ExitCode == nil || *e.ExitCode != 3 {
		t.Fatalf("exit reported on start = %+v, want code 3", e)
	}
	got, err := second.Get(ctx(t), "long")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != runtime.StatusRunning || got.Pid != long.Pid {
		t.Fatalf("after agent restart long = %+v, want running with pid %d", got, long.Pid)
	}
	if rec.Count("long", events.TypeInstanceExited) != 0 {
		t.Fatal("a running instance was reported as exited")
	}
	second.Close()

	// A third agent does not report the same exit again.
	rec3 := conformance.NewRecorder()
	third := newRuntime(t, daemon.Address, ns, rec3)
	rec3.WaitFor(t, "", events.TypeRuntimeConnected, 10*time.Second)
	if n := rec3.Count("short", events.TypeInstanceExited); n != 0 {
		t.Fatalf("exit reported again by a later agent (%d times)", n)
	}
	if inst, _ := third.Get(ctx(t), "short"); inst.ExitCode == nil || *inst.ExitCode != 3 {
		t.Fatalf("short after restarts = %+v", inst)
	}
}

// A containerd restart is not an exit: the agent reconnects, instances keep
// running, and an exit that happened while containerd was down is reported.
func TestContainerdRestart(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	own, err := testenv.StartContainerd(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { own.Close() })
	ns, rec := "rentals", conformance.NewRecorder()
	r := newRuntime(t, own.Address, ns, rec)
	rec.WaitFor(t, "", events.TypeRuntimeConnected, 10*time.Second)
	long, err := r.Start(ctx(t), payloadSpec("survivor", "sleep", "inf"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Start(ctx(t), payloadSpec("quitter", "sleep", "2", "exit", "5")); err != nil {
		t.Fatal(err)
	}

	if err := own.Stop(); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, "", events.TypeRuntimeDisconnected, 10*time.Second)
	// "quitter" exits while containerd is down; its shim keeps the status.
	time.Sleep(2500 * time.Millisecond)
	if rec.Count("survivor", events.TypeInstanceExited)+rec.Count("quitter", events.TypeInstanceExited) != 0 {
		t.Fatalf("a lost connection was reported as an exit: %s", rec.Summary())
	}
	if err := own.Start(); err != nil {
		t.Fatal(err)
	}

	// containerd reaps a task that exited while it was down, and its exit
	// code with it: the exit is still reported, with the code when known.
	e := rec.WaitFor(t, "quitter", events.TypeInstanceExited, 20*time.Second)
	if (e.ExitCode == nil && !strings.Contains(e.Message, "exit code unavailable")) || (e.ExitCode != nil && *e.ExitCode != 5) {
		t.Fatalf("exit after containerd restart = %+v, want code 5 or a stated unknown code", e)
	}
	t.Logf("exit reported after containerd restart: code %v, message %q", e.ExitCode, e.Message)
	if inst, err := r.Get(ctx(t), "quitter"); err != nil || inst.Status != runtime.StatusExited {
		t.Fatalf("quitter after containerd restart = %+v, %v; want exited", inst, err)
	}
	got, err := r.Get(ctx(t), "survivor")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != runtime.StatusRunning || got.Pid != long.Pid {
		t.Fatalf("survivor after containerd restart = %+v, want running pid %d", got, long.Pid)
	}
	if rec.Count("survivor", events.TypeInstanceExited) != 0 {
		t.Fatal("survivor reported as exited")
	}
	// The agent still works against the restarted daemon.
	if err := r.Terminate(ctx(t), "survivor", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func waitTaskStopped(t *testing.T, cl *containerd.Client, cctx context.Context, id string) {
	t.Helper()
	c, err := cl.LoadContainer(cctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Task(cctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if st, err := task.Status(cctx); err == nil && st.Status == containerd.Stopped {
			return
		}
	}
	t.Fatalf("task %s did not stop", id)
}
