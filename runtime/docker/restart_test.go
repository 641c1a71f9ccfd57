package docker

import (
	"os"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// TestDockerdRestart restarts dockerd under running instances: dockerd
// (without live restore) stops them as it goes down. The event stream is resubscribed and every exit is
// reported exactly once, with its code; an agent started afterwards
// reports none again.
func TestDockerdRestart(t *testing.T) {
	for _, name := range []string{debian, moby} {
		t.Run(name, func(t *testing.T) {
			shared := needDockerd(t, name)
			dir, err := os.MkdirTemp("", "ha-rs-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			bin, _ := testenv.MobyDockerd()
			if name == debian {
				bin = testenv.DebianDockerd()
			}
			d, err := testenv.StartDockerd(dir, testenv.DockerdOptions{Bin: bin, Containerd: containerd.Address, CDI: shared.CDIDir != ""})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(d.Close)
			sc := newScope(t, d)
			rec := conformance.NewRecorder()
			l := lifecycle.New(sc.open(t, rec, nil), lifecycle.Options{Events: rec})
			t.Cleanup(func() { l.Close() })
			if err := l.Restore(conformance.Ctx(t)); err != nil {
				t.Fatal(err)
			}
			rec.WaitFor(t, "", events.TypeRuntimeConnected, 30*time.Second)
			ids := map[string][]string{
				"rs-running": {"sleep", "inf"},
				"rs-exits":   {"sleep", "3", "exit", "5"},
			}
			for id, args := range ids {
				if _, err := l.Start(conformance.Ctx(t), runtime.InstanceSpec{ID: id, Image: payloadRef, Command: args}); err != nil {
					t.Fatal(err)
				}
			}
			d.Stop()
			if err := d.Start(); err != nil {
				t.Fatal(err)
			}
			rec.WaitFor(t, "", events.TypeRuntimeDisconnected, 30*time.Second)
			for id := range ids {
				rec.WaitFor(t, id, events.TypeInstanceExited, time.Minute)
			}
			// Each exit carries the code the daemon keeps (dockerd stops its
			// containers as it goes down: SIGTERM ends both).
			for id := range ids {
				ev := exitEvent(rec, id)
				inst, err := l.Get(conformance.Ctx(t), id)
				if err != nil || ev.ExitCode == nil || inst.ExitCode == nil || *ev.ExitCode != *inst.ExitCode {
					t.Errorf("exit of %s reported as %+v; instance %+v %v", id, ev, inst, err)
				}
			}
			time.Sleep(2 * time.Second)
			for id := range ids {
				if n := rec.Count(id, events.TypeInstanceExited); n != 1 {
					t.Errorf("exit of %s reported %d times:%s", id, n, rec.Summary())
				}
			}
			// A restarted agent reports none of them again.
			l.Close()
			rec2 := conformance.NewRecorder()
			l2 := lifecycle.New(sc.open(t, rec2, nil), lifecycle.Options{Events: rec2})
			t.Cleanup(func() { l2.Close() })
			rec2.WaitFor(t, "", events.TypeRuntimeConnected, 30*time.Second)
			time.Sleep(time.Second)
			for id := range ids {
				if n := rec2.Count(id, events.TypeInstanceExited); n != 0 {
					t.Errorf("restarted agent reported the exit of %s again:%s", id, rec2.Summary())
				}
				if err := l2.Terminate(conformance.Ctx(t), id, time.Second); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func exitEvent(rec *conformance.Recorder, id string) events.Event {
	for _, e := range rec.All() {
		if e.InstanceID == id && e.Type == events.TypeInstanceExited {
			return e
		}
	}
	return events.Event{}
}

// TestExitWhileDockerdDown runs dockerd with live restore: the rentals
// outlive the daemon, one exits while it is down, and once it is back that
// exit is reported exactly once with its code, while the one still running
// is not reported at all.
func TestExitWhileDockerdDown(t *testing.T) {
	for _, name := range []string{debian, moby} {
		t.Run(name, func(t *testing.T) {
			shared := needDockerd(t, name)
			dir, err := os.MkdirTemp("", "ha-lr-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			bin, _ := testenv.MobyDockerd()
			if name == debian {
				bin = testenv.DebianDockerd()
			}
			d, err := testenv.StartDockerd(dir, testenv.DockerdOptions{Bin: bin, Containerd: containerd.Address, CDI: shared.CDIDir != "", LiveRestore: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(d.Close)
			sc := newScope(t, d)
			rec := conformance.NewRecorder()
			l := lifecycle.New(sc.open(t, rec, nil), lifecycle.Options{Events: rec})
			t.Cleanup(func() { l.Close() })
			rec.WaitFor(t, "", events.TypeRuntimeConnected, 30*time.Second)
			if _, err := l.Start(conformance.Ctx(t), runtime.InstanceSpec{ID: "lr-running", Image: payloadRef, Command: []string{"sleep", "inf"}}); err != nil {
				t.Fatal(err)
			}
			if _, err := l.Start(conformance.Ctx(t), runtime.InstanceSpec{ID: "lr-exits", Image: payloadRef, Command: []string{"sleep", "3", "exit", "5"}}); err != nil {
				t.Fatal(err)
			}
			d.Stop()
			rec.WaitFor(t, "", events.TypeRuntimeDisconnected, 30*time.Second)
			time.Sleep(5 * time.Second) // lr-exits ends while dockerd is down
			if n := rec.Count("lr-exits", events.TypeInstanceExited); n != 0 {
				t.Fatalf("exit reported while dockerd was down: %s", rec.Summary())
			}
			if err := d.Start(); err != nil {
				t.Fatal(err)
			}
			ev := rec.WaitFor(t, "lr-exits", events.TypeInstanceExited, time.Minute)
			if ev.ExitCode == nil || *ev.ExitCode != 5 {
				t.Errorf("exit while dockerd was down reported as %+v, want code 5", ev)
			}
			time.Sleep(2 * time.Second)
			if n := rec.Count("lr-exits", events.TypeInstanceExited); n != 1 {
				t.Errorf("exit reported %d times:%s", n, rec.Summary())
			}
			if n := rec.Count("lr-running", events.TypeInstanceExited); n != 0 {
				t.Errorf("a rental that kept running was reported exited:%s", rec.Summary())
			}
			if inst, err := l.Get(conformance.Ctx(t), "lr-running"); err != nil || inst.Status != runtime.StatusRunning {
				t.Errorf("lr-running after the restart: %+v %v", inst, err)
			}
			for _, id := range []string{"lr-running", "lr-exits"} {
				if err := l.Terminate(conformance.Ctx(t), id, time.Second); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
