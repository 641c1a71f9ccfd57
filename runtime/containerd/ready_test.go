package containerd

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/host-agent/host-agent/internal/conformance"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A wrong CONTAINERD_ADDRESS is logged (at growing intervals, not in
// silence), and Ping, which readyz reports, names the address and the cause.
func TestWrongContainerdAddressLoggedAndReported(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	addr := t.TempDir() + "/no-containerd.sock"
	r, err := New(Options{Address: addr, Namespace: "rentals", LogDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = r.Ping(ctx)
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("ping of a containerd that is not there: %v, want an error naming %s", err, addr)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "cannot reach containerd") {
		if time.Now().After(deadline) {
			t.Fatalf("nothing logged about the unreachable containerd: %s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), addr) {
		t.Fatalf("the log does not name the address: %s", logs.String())
	}
}

// With runc missing, containerd answers but cannot run a container: Ping
// (and so readyz) fails and says why; with runc there, it passes.
func TestPingFailsWhenRuncIsMissing(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns := testNamespace(t)
	good := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())
	if err := good.be.Ping(ctx(t)); err != nil {
		t.Fatalf("ping with runc present: %v", err)
	}
	broken := newRuntime(t, daemon.Address, ns+"-broken", conformance.NewRecorder())
	broken.be.runcBinary = "/nonexistent/runc"
	var err error
	for range 100 {
		// The first pings may only say the check is under way.
		if err = broken.be.Ping(ctx(t)); err != nil && !strings.Contains(err.Error(), "still checking") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err == nil || !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "cannot run a container") {
		t.Fatalf("ping with runc missing: %v, want Unavailable saying containerd cannot run a container", err)
	}
	assertNothingLeft(t, ns+"-broken")
}
