package containerd

import (
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types/task"
	containerd "github.com/containerd/containerd/v2/client"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// Events queued before the watcher's snapshot are applied after it; none
// of them may move a task back, and the events after it must all count.
func TestTaskCacheReplaysEventsOverItsSnapshot(t *testing.T) {
	var c taskCache
	c.set("x", 1, task.Status_RUNNING, 0, time.Time{})
	if _, live := c.snapshot(); live {
		t.Fatal("cache live before its first snapshot")
	}
	// Snapshot: a runs as pid 10; b's first task (pid 20) was deleted and
	// b runs again as pid 21; d's task was deleted.
	c.reset([]*task.Process{
		{ID: "a", Pid: 10, Status: task.Status_RUNNING},
		{ID: "b", Pid: 21, Status: task.Status_RUNNING},
	})
	for _, ev := range []any{
		// Queued before the snapshot.
		&apievents.TaskCreate{ContainerID: "a", Pid: 10},
		&apievents.TaskCreate{ContainerID: "b", Pid: 20},
		&apievents.TaskStart{ContainerID: "b", Pid: 20},
		&apievents.TaskExit{ContainerID: "d", ID: "d", Pid: 40, ExitStatus: 1},
		&apievents.TaskExit{ContainerID: "b", ID: "b", Pid: 20, ExitStatus: 1},
		&apievents.TaskDelete{ContainerID: "b", ID: "b", Pid: 20},
		&apievents.TaskCreate{ContainerID: "b", Pid: 21},
		&apievents.TaskStart{ContainerID: "a", Pid: 10},
		&apievents.TaskStart{ContainerID: "b", Pid: 21},
		// After it.
		&apievents.TaskCreate{ContainerID: "c", Pid: 30},
		&apievents.TaskStart{ContainerID: "c", Pid: 30},
		&apievents.TaskExit{ContainerID: "c", ID: "c", Pid: 30, ExitStatus: 3},
		&apievents.TaskExit{ContainerID: "a", ID: "exec-1", Pid: 99, ExitStatus: 7},
		&apievents.TaskPaused{ContainerID: "b"},
		&apievents.TaskCreate{ContainerID: "e", Pid: 50},
		&apievents.TaskStart{ContainerID: "e", Pid: 50},
		&apievents.TaskExit{ContainerID: "e", ID: "e", Pid: 50},
		&apievents.TaskDelete{ContainerID: "e", ID: "e", Pid: 50},
		&apievents.TaskStart{ContainerID: "c", Pid: 30}, // late duplicate
	} {
		if !c.apply(ev) {
			t.Fatalf("%T not applied", ev)
		}
	}
	got, live := c.snapshot()
	if !live {
		t.Fatal("cache not live")
	}
	want := map[string]string{"a": "10 RUNNING 0", "b": "21 PAUSED 0", "c": "30 STOPPED 3"}
	if len(got) != len(want) {
		t.Fatalf("cache holds %d tasks, want %d: %v", len(got), len(want), got)
	}
	for id, w := range want {
		p := got[id]
		if p == nil || fmt.Sprint(p.Pid, " ", p.Status, " ", p.ExitStatus) != w {
			t.Errorf("task %s = %v, want %s", id, p, w)
		}
	}
	c.drop()
	if _, live := c.snapshot(); live {
		t.Fatal("cache live after its stream ended")
	}
}

// A correction from a fresh listing repairs what the events missed, but
// keeps what changed while the listing was taken.
func TestTaskCacheCorrection(t *testing.T) {
	var c taskCache
	if fixed := c.correct([]*task.Process{{ID: "a", Pid: 1}}, c.mark()); fixed != nil {
		t.Fatalf("a cache that is not live was corrected: %v", fixed)
	}
	c.reset([]*task.Process{
		{ID: "a", Pid: 10, Status: task.Status_RUNNING},
		{ID: "b", Pid: 20, Status: task.Status_RUNNING},
		{ID: "c", Pid: 30, Status: task.Status_RUNNING},
		{ID: "f", Pid: 60, Status: task.Status_RUNNING},
	})
	c.apply(&apievents.TaskPaused{ContainerID: "f"})
	since := c.mark()
	// While the listing is taken, d starts and f resumes.
	c.set("d", 40, task.Status_RUNNING, 0, time.Time{})
	c.apply(&apievents.TaskResumed{ContainerID: "f"})
	fixed := c.correct([]*task.Process{
		{ID: "a", Pid: 10, Status: task.Status_STOPPED, ExitStatus: 3}, // its exit was missed
		// b's deletion was missed
		{ID: "c", Pid: 30, Status: task.Status_RUNNING},
		// d is not listed yet
		{ID: "e", Pid: 50, Status: task.Status_RUNNING}, // its start was missed
		{ID: "f", Pid: 60, Status: task.Status_PAUSED},
	}, since)
	slices.Sort(fixed)
	if fmt.Sprint(fixed) != "[a b e]" {
		t.Errorf("corrected %v, want [a b e]", fixed)
	}
	// Events queued before the listing come after it.
	c.apply(&apievents.TaskStart{ContainerID: "a", Pid: 10})
	c.apply(&apievents.TaskCreate{ContainerID: "e", Pid: 50})
	got, _ := c.snapshot()
	want := map[string]string{"a": "10 STOPPED 3", "c": "30 RUNNING 0", "d": "40 RUNNING 0",
		"e": "50 RUNNING 0", "f": "60 RUNNING 0"}
	if len(got) != len(want) {
		t.Fatalf("cache holds %d tasks, want %d: %v", len(got), len(want), got)
	}
	for id, w := range want {
		if p := got[id]; p == nil || fmt.Sprint(p.Pid, " ", p.Status, " ", p.ExitStatus) != w {
			t.Errorf("task %s = %v, want %s", id, p, w)
		}
	}
	// A second correction with a newer listing moves d and f too.
	if fixed := c.correct([]*task.Process{{ID: "a", Pid: 10, Status: task.Status_STOPPED, ExitStatus: 3},
		{ID: "c", Pid: 30, Status: task.Status_RUNNING}, {ID: "e", Pid: 50, Status: task.Status_RUNNING},
		{ID: "f", Pid: 60, Status: task.Status_STOPPED, ExitStatus: 1}}, c.mark()); fmt.Sprint(len(fixed)) != "2" {
		t.Errorf("second correction changed %v, want d and f", fixed)
	}
}

// List serves the tasks' state from the event stream, not from a ListTasks
// per call, and agrees with containerd's own answer whatever happens to the
// tasks, by the agent or from outside it.
func TestListFollowsTaskChanges(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	rec.WaitFor(t, "", events.TypeRuntimeConnected, 10*time.Second)
	ids := []string{"keeps", "killed", "paused", "removed", "quits"}
	for _, id := range ids {
		args := []string{"sleep", "inf"}
		if id == "quits" {
			args = []string{"sleep", "1", "exit", "3"}
		}
		inst, err := r.Start(ctx(t), payloadSpec(id, args...))
		if err != nil {
			t.Fatal(err)
		}
		// Right after its start, the list shows it running.
		if got := listed(t, r.be, id); got.Status != runtime.StatusRunning || got.Pid != inst.Pid {
			t.Fatalf("%s right after its start is listed as %+v, want running with pid %d", id, got, inst.Pid)
		}
	}

	cl, cctx := rawClient(t, daemon.Address, ns)
	outside := func(id string) containerd.Task {
		c, err := cl.LoadContainer(cctx, id)
		if err != nil {
			t.Fatal(err)
		}
		task, err := c.Task(cctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		return task
	}
	if err := outside("killed").Kill(cctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := outside("paused").Pause(cctx); err != nil {
		t.Fatal(err)
	}
	removed := outside("removed")
	if _, err := removed.Delete(cctx, containerd.WithProcessKill); err != nil {
		t.Fatal(err)
	}

	want := map[string]string{"keeps": "running", "killed": "exited 137", "paused": "paused",
		"removed": "exited", "quits": "exited 3"}
	var got map[string]string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		got = summarize(t, r.be, true)
		truth := summarize(t, r.be, false)
		if fmt.Sprint(got) == fmt.Sprint(truth) && statusesMatch(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("List = %v\ncontainerd says %v\nwant statuses %v", got, truth, want)
		}
	}

	before := r.be.taskLists.Load()
	for range 20 {
		if _, err := r.be.List(ctx(t)); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.be.taskLists.Load() - before; n != 0 {
		t.Fatalf("20 Lists with the event stream up asked containerd for its tasks %d times", n)
	}

	if err := outside("paused").Resume(cctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if err := r.Terminate(ctx(t), id, 0); err != nil {
			t.Fatal(err)
		}
	}
	if inst, err := r.be.List(ctx(t)); err != nil || len(inst) != 0 {
		t.Fatalf("after terminating all, List = %+v, %v", inst, err)
	}
}

func listed(t *testing.T, r *Runtime, id string) runtime.Instance {
	t.Helper()
	list, err := r.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, inst := range list {
		if inst.ID == id {
			return inst
		}
	}
	t.Fatalf("%s not listed", id)
	return runtime.Instance{}
}

// summarize lists the instances, from the cache or from containerd, as
// "status pid exit-code" by ID.
func summarize(t *testing.T, r *Runtime, cached bool) map[string]string {
	t.Helper()
	list, err := r.list(ctx(t), cached)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, inst := range list {
		s := fmt.Sprint(inst.Status, " ", inst.Pid)
		if inst.ExitCode != nil {
			s += fmt.Sprint(" ", *inst.ExitCode)
		}
		m[inst.ID] = s
	}
	return m
}

// statusesMatch says whether each instance has the wanted status (and exit
// code, where want names one).
func statusesMatch(got, want map[string]string) bool {
	for id, w := range want {
		var status, code string
		var pid int
		fmt.Sscan(got[id], &status, &pid, &code)
		if fmt.Sprint(status, " ", code) != w && status != w {
			return false
		}
	}
	return len(got) == len(want)
}
