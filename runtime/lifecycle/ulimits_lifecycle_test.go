package lifecycle_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// The Lifecycle refuses a real-time priority itself, naming the field,
// before the back end creates anything: whatever calls it.
func TestLifecycleRefusesRealTimePriority(t *testing.T) {
	t.Parallel()
	be := newFakeBackend(nil)
	l := lifecycle.New(be, lifecycle.Options{
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		ReconcileInterval: -1,
	})
	defer l.Close()
	spec := runtime.InstanceSpec{ID: "rt", Image: "docker.io/library/busybox:latest", Ulimits: map[string]int64{"nofile": 1024, "rtprio": 99}}
	_, err := l.Start(context.Background(), spec)
	var fe interface{ ErrorField() string }
	if !errdefs.IsInvalidArgument(err) || !errors.As(err, &fe) || fe.ErrorField() != "ulimits.rtprio" {
		t.Fatalf("want an invalid ulimits.rtprio, got %v", err)
	}
	be.mu.Lock()
	n := len(be.containers)
	be.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d containers created", n)
	}
	spec.Ulimits["rtprio"] = 0
	if _, err := l.Start(context.Background(), spec); err != nil {
		t.Fatalf("rtprio 0: %v", err)
	}
}
