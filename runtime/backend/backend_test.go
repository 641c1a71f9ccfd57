package backend

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/hostport"
)

type recorder struct{ got []events.Event }

func (r *recorder) Publish(e events.Event) { r.got = append(r.got, e) }

func TestEnvListSorted(t *testing.T) {
	t.Parallel()
	got := strings.Join(EnvList(map[string]string{"B": "2", "A": "1=x", "C": ""}), " ")
	if got != "A=1=x B=2 C=" {
		t.Fatalf("EnvList = %q", got)
	}
}

// TestStartedPublishesTheOutcome: a failed start publishes instance.failed
// naming its step and answers no instance; a start that ran publishes
// instance.running with its ports.
func TestStartedPublishesTheOutcome(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	pub := &recorder{}
	spec := runtime.InstanceSpec{ID: "a", Image: "busybox"}
	failure := &runtime.StepError{Step: runtime.StepPull, Err: errors.New("no such image")}
	inst, err := Started(log, pub, spec, runtime.Instance{ID: "a"}, failure)
	if !errors.Is(err, failure) || inst.ID != "" {
		t.Errorf("failed start answered %+v, %v", inst, err)
	}
	ports := []hostport.Mapping{{ContainerPort: 22, HostPort: 40001, Protocol: "tcp"}}
	inst, err = Started(log, pub, spec, runtime.Instance{ID: "a", Ports: ports}, nil)
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

// TestFromLabels reads back what the agent wrote into a container's labels.
func TestFromLabels(t *testing.T) {
	t.Parallel()
	l := map[string]string{
		runtime.LabelImage:               "busybox",
		runtime.LabelSpecHash:            "h1",
		runtime.LabelUserPrefix + "team": "ml",
	}
	inst := FromLabels(l)
	if inst.Image != "busybox" || inst.SpecHash != "h1" || inst.Labels["team"] != "ml" || len(inst.AgentLabels) != len(l) {
		t.Errorf("FromLabels = %+v", inst)
	}
	if len(inst.Labels) != 1 {
		t.Errorf("the tenant's labels are %v, want team alone", inst.Labels)
	}
}

// TestEveryRunsUntilDone: the work runs on each tick and not after the
// context ends.
func TestEveryRunsUntilDone(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var n atomic.Int32
	done := make(chan struct{})
	go func() {
		Every(ctx, time.Millisecond, func(context.Context) {
			if n.Add(1) == 3 {
				cancel()
			}
		})
		close(done)
	}()
	<-done
	if got := n.Load(); got != 3 {
		t.Errorf("work ran %d times, want 3 (it stops once the context ends)", got)
	}
}
