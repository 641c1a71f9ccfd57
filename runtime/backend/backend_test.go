package backend

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

func TestEnvListSorted(t *testing.T) {
	t.Parallel()
	got := strings.Join(EnvList(map[string]string{"B": "2", "A": "1=x", "C": ""}), " ")
	if got != "A=1=x B=2 C=" {
		t.Fatalf("EnvList = %q", got)
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
