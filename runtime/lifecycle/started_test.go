package lifecycle

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/hostport"
)

type recorder struct{ got []events.Event }

func (r *recorder) Publish(e events.Event) { r.got = append(r.got, e) }

// TestStartedPublishesTheOutcomeOfANewInstance: a failed start publishes instance.failed
// naming its step and answers no instance; a start that ran publishes
// instance.running with its ports.
func TestStartedPublishesTheOutcomeOfANewInstance(t *testing.T) {
	t.Parallel()
	pub := &recorder{}
	l := &Lifecycle{log: slog.New(slog.NewTextHandler(io.Discard, nil)), pub: pub}
	spec := runtime.InstanceSpec{ID: "a", Image: "busybox"}
	failure := &runtime.StepError{Step: runtime.StepPull, Err: errors.New("no such image")}
	inst, err := l.started(spec, runtime.Instance{ID: "a"}, failure)
	if !errors.Is(err, failure) || inst.ID != "" {
		t.Errorf("failed start answered %+v, %v", inst, err)
	}
	ports := []hostport.Mapping{{ContainerPort: 22, HostPort: 40001, Protocol: "tcp"}}
	inst, err = l.started(spec, runtime.Instance{ID: "a", Ports: ports}, nil)
	if err != nil || inst.ID != "a" {
		t.Errorf("start answered %+v, %v", inst, err)
	}
	if len(pub.got) != 2 {
		t.Fatalf("published %+v, want two events", pub.got)
	}
	if e := pub.got[0]; e.Type != events.TypeInstanceFailed || e.Status != "failed" || e.Step != runtime.StepPull || !strings.Contains(e.Error, "no such image") {
		t.Errorf("failure event %+v", e)
	}
	if e := pub.got[1]; e.Type != events.TypeInstanceRunning || e.Status != string(runtime.StatusRunning) || len(e.Ports) != 1 || e.Ports[0].HostPort != 40001 {
		t.Errorf("running event %+v", e)
	}
}
