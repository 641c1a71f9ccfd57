package lifecycle_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// Where starts reserve no host ports (a back end without the agent's
// network), a start asking for ports is refused naming the field, before
// the back end creates anything: never a rental answered without the ports
// it asked for.
func TestPortsRefusedWhereNotPublished(t *testing.T) {
	t.Parallel()
	be := newFakeBackend(nil)
	l := lifecycle.New(be, lifecycle.Options{
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		ReconcileInterval: -1,
	})
	defer l.Close()
	_, err := l.Start(context.Background(), portSpec("p", 22))
	var fe interface{ ErrorField() string }
	if !errdefs.IsInvalidArgument(err) || !errors.As(err, &fe) || fe.ErrorField() != "ports" {
		t.Fatalf("want an invalid ports field, got %v", err)
	}
	be.mu.Lock()
	n := len(be.containers)
	be.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d containers created", n)
	}
	if _, err := l.Start(context.Background(), portSpec("q")); err != nil {
		t.Fatalf("a start without ports: %v", err)
	}
}
