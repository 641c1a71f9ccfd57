package containerd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	containerd "github.com/containerd/containerd/v2/client"
	ctrevents "github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/typeurl/v2"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime/events"
)

// containerd's Subscribe returns before containerd has registered the
// subscription. A task that exits after the agent's snapshot of the tasks
// and before that registration is in neither the snapshot nor the event
// stream; its exit must be reported all the same, once, and the instance
// listed as exited.
func TestExitBeforeTheSubscriptionTakesEffect(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns := testNamespace(t)
	cl, cctx := rawClient(t, daemon.Address, ns)
	seen := watchTasks(t, cl, cctx, ns)
	first := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())
	if _, err := first.Start(ctx(t), payloadSpec("gap", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	seen.waitFor(t, "/tasks/start", "gap") // the test's own subscription is registered
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	// The next agent's subscription is registered only when release is
	// closed.
	release := make(chan struct{})
	rec := conformance.NewRecorder()
	second := newRuntimeWith(t, ns, rec, func(o *Options) { o.subscribe = relaySubscription(cl, release, nil) })
	waitCacheLive(t, second.be)
	killTask(t, cl, cctx, "gap")
	seen.waitFor(t, "/tasks/exit", "gap") // containerd has sent the exit to its subscribers
	close(release)

	e := rec.WaitFor(t, "gap", events.TypeInstanceExited, 20*time.Second)
	if e.ExitCode == nil || *e.ExitCode != 137 {
		t.Fatalf("gap's exit = %+v, want code 137", e)
	}
	if got := summarize(t, second.be, true); got["gap"] != "exited 0 137" {
		t.Fatalf("List = %v, want gap exited with code 137", got)
	}
	if err := second.Terminate(ctx(t), "gap", 0); err != nil {
		t.Fatal(err)
	}
	if n := rec.Count("gap", events.TypeInstanceExited); n != 1 {
		t.Fatalf("gap's exit reported %d times", n)
	}
}

// An event the stream loses (a shim gives up publishing an event that
// containerd did not take in time) is made up for by the periodic resync:
// the exit is reported, once, and the cache shows what containerd shows.
func TestResyncMakesUpForLostEvents(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns := testNamespace(t)
	first := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())
	for _, id := range []string{"lost", "paused", "keeps"} {
		if _, err := first.Start(ctx(t), payloadSpec(id, "sleep", "inf")); err != nil {
			t.Fatal(err)
		}
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	// The next agent's stream loses every exit and pause.
	cl, cctx := rawClient(t, daemon.Address, ns)
	lose := func(topic string) bool { return topic == "/tasks/exit" || topic == "/tasks/paused" }
	rec := conformance.NewRecorder()
	second := newRuntimeWith(t, ns, rec, func(o *Options) {
		o.subscribe = relaySubscription(cl, nil, lose)
		o.ResyncInterval = 200 * time.Millisecond
	})
	waitCacheLive(t, second.be)
	c, err := cl.LoadContainer(cctx, "paused")
	if err != nil {
		t.Fatal(err)
	}
	paused, err := c.Task(cctx, nil)
	if err != nil {
		t.Fatal(err)
	}

	// The second round comes after the resync that follows the first
	// event, so only the periodic resync can make up for its lost events.
	rounds := []struct {
		act  func() error
		exit string
		want map[string]string
	}{
		{func() error { killTask(t, cl, cctx, "lost"); return paused.Pause(cctx) }, "lost",
			map[string]string{"lost": "exited 137", "paused": "paused", "keeps": "running"}},
		{func() error { killTask(t, cl, cctx, "keeps"); return paused.Resume(cctx) }, "keeps",
			map[string]string{"lost": "exited 137", "paused": "running", "keeps": "exited 137"}},
	}
	for _, round := range rounds {
		if err := round.act(); err != nil {
			t.Fatal(err)
		}
		e := rec.WaitFor(t, round.exit, events.TypeInstanceExited, 20*time.Second)
		if e.ExitCode == nil || *e.ExitCode != 137 {
			t.Fatalf("%s's exit = %+v, want code 137", round.exit, e)
		}
		var got map[string]string
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			got = summarize(t, second.be, true)
			truth := summarize(t, second.be, false)
			if fmt.Sprint(got) == fmt.Sprint(truth) && statusesMatch(got, round.want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("List = %v\ncontainerd says %v\nwant statuses %v", got, truth, round.want)
			}
		}
	}
	for _, id := range []string{"lost", "paused", "keeps"} {
		if err := second.Terminate(ctx(t), id, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"lost", "keeps"} {
		if n := rec.Count(id, events.TypeInstanceExited); n != 1 {
			t.Errorf("%s's exit reported %d times", id, n)
		}
	}
}

// newRuntimeWith is newRuntime with options of the test's own.
func newRuntimeWith(t *testing.T, ns string, pub events.Publisher, set func(*Options)) *agent {
	t.Helper()
	opts := Options{
		Address:   daemon.Address,
		Namespace: ns,
		AgentID:   "test-agent",
		LogDir:    t.TempDir(),
		Events:    pub,
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	set(&opts)
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return withLifecycle(t, r, pub)
}

// relaySubscription is a Subscribe that subscribes through cl only once
// release is closed (nil: at once) and loses the events whose topic lose
// names (nil: none).
func relaySubscription(cl *containerd.Client, release <-chan struct{}, lose func(topic string) bool) func(context.Context, ...string) (<-chan *ctrevents.Envelope, <-chan error) {
	return func(ctx context.Context, filters ...string) (<-chan *ctrevents.Envelope, <-chan error) {
		envC, errC := make(chan *ctrevents.Envelope), make(chan error, 1)
		go func() {
			if release != nil {
				select {
				case <-release:
				case <-ctx.Done():
					return
				}
			}
			in, inErr := cl.Subscribe(ctx, filters...)
			for {
				select {
				case env := <-in:
					if lose != nil && lose(env.Topic) {
						continue
					}
					select {
					case envC <- env:
					case <-ctx.Done():
						return
					}
				case err := <-inErr:
					errC <- err
					return
				case <-ctx.Done():
					return
				}
			}
		}()
		return envC, errC
	}
}

// taskEvents is a test's own subscription to the namespace's task starts
// and exits.
type taskEvents struct {
	envC <-chan *ctrevents.Envelope
	errC <-chan error
}

func watchTasks(t *testing.T, cl *containerd.Client, cctx context.Context, ns string) *taskEvents {
	t.Helper()
	sctx, cancel := context.WithCancel(cctx)
	t.Cleanup(cancel)
	envC, errC := cl.Subscribe(sctx, fmt.Sprintf(`topic=="/tasks/start",namespace==%q`, ns),
		fmt.Sprintf(`topic=="/tasks/exit",namespace==%q`, ns))
	return &taskEvents{envC: envC, errC: errC}
}

// waitFor waits for the event on topic about container id.
func (s *taskEvents) waitFor(t *testing.T, topic, id string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case env := <-s.envC:
			ev, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				t.Fatal(err)
			}
			var about string
			switch e := ev.(type) {
			case *apievents.TaskStart:
				about = e.ContainerID
			case *apievents.TaskExit:
				about = e.ContainerID
			}
			if env.Topic == topic && about == id {
				return
			}
		case err := <-s.errC:
			t.Fatalf("test's event subscription: %v", err)
		case <-timeout:
			t.Fatalf("no %s event for %s", topic, id)
		}
	}
}

// waitCacheLive waits until the watcher has taken its snapshot of the
// tasks.
func waitCacheLive(t *testing.T, r *Runtime) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, live := r.tasks.snapshot(); live {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the task cache did not become live")
		}
	}
}

// killTask kills container id's task from outside the agent.
func killTask(t *testing.T, cl *containerd.Client, cctx context.Context, id string) {
	t.Helper()
	c, err := cl.LoadContainer(cctx, id)
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
}
