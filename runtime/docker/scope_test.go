package docker

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// TestScopesKeptApart: the self-test's back end (Scope "selftest") and the
// agent's share a daemon and even an instance ID, yet each sees, lists,
// terminates and reports the exits of its own containers only.
func TestScopesKeptApart(t *testing.T) {
	d := needDockerd(t, debian)
	open := func(scope string, rec *conformance.Recorder) *Runtime {
		r, err := New(Options{Host: d.Host, AgentID: "scopes", StateDir: t.TempDir(), Events: rec, Scope: scope,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	agentRec, selfRec := conformance.NewRecorder(), conformance.NewRecorder()
	agent, self := open("", agentRec), open("selftest", selfRec)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const id = "scoped-x"
	tenant, err := agent.Start(ctx, runtime.InstanceSpec{ID: id, Image: payloadRef, Command: []string{"sleep", "inf"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Terminate(context.Background(), id, 0) })
	test, err := self.Start(ctx, runtime.InstanceSpec{ID: id, Image: payloadRef, Command: []string{"exit", "3"}})
	if err != nil {
		t.Fatal(err)
	}
	if test.ContainerID == tenant.ContainerID {
		t.Fatal("the self-test's start answered with the tenant's container")
	}
	ev := selfRec.WaitFor(t, id, events.TypeInstanceExited, time.Minute)
	if ev.ExitCode == nil || *ev.ExitCode != 3 {
		t.Fatalf("the self-test's exit: %+v", ev)
	}
	for name, r := range map[string]*Runtime{"agent": agent, "selftest": self} {
		list, err := r.List(ctx)
		if err != nil || len(list) != 1 {
			t.Fatalf("%s lists %+v (%v), want its one container", name, list, err)
		}
		want := map[string]string{"agent": tenant.ContainerID, "selftest": test.ContainerID}[name]
		if list[0].ContainerID != want {
			t.Errorf("%s lists %s, want %s", name, list[0].ContainerID, want)
		}
		if got, err := r.Get(ctx, id); err != nil || got.ContainerID != want {
			t.Errorf("%s gets %+v (%v)", name, got, err)
		}
	}
	if err := self.Terminate(ctx, id, 0); err != nil {
		t.Fatal(err)
	}
	inst, err := agent.Get(ctx, id)
	if err != nil || inst.Status != runtime.StatusRunning {
		t.Fatalf("the tenant after the self-test's terminate: %+v %v", inst, err)
	}
	for _, e := range agentRec.All() {
		if e.Type == events.TypeInstanceExited || e.Type == events.TypeInstanceTerminated {
			t.Errorf("the agent reported the self-test's container: %+v", e)
		}
	}
}
