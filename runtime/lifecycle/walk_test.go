package lifecycle_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// callLog records the calls a lifecycle makes into its back end.
type callLog struct {
	runtime.Runtime
	mu    sync.Mutex
	calls []string
}

func (c *callLog) log(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, name)
}

func (c *callLog) take() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := strings.Join(c.calls, " ")
	c.calls = nil
	return s
}

func (c *callLog) Start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	c.log("Start")
	return c.Runtime.Start(ctx, spec)
}

func (c *callLog) Terminate(ctx context.Context, id string, timeout time.Duration) error {
	c.log("Terminate")
	return c.Runtime.Terminate(ctx, id, timeout)
}

func (c *callLog) Get(ctx context.Context, id string) (runtime.Instance, error) {
	c.log("Get")
	return c.Runtime.Get(ctx, id)
}

func (c *callLog) List(ctx context.Context) ([]runtime.Instance, error) {
	c.log("List")
	return c.Runtime.List(ctx)
}

// TestWalkCrossesTheBackEndOnce: a request goes down to the back end in
// one look-up and one call that does the work, and comes back: a new
// start is Get (NotFound: admission, reservations) then Start; a repeated
// start is Get (the spec hash compared here) then Start; a start of
// another request under a held ID is Get alone (Conflict); a terminate is
// Get then Terminate; a terminate of nothing is Get alone.
func TestWalkCrossesTheBackEndOnce(t *testing.T) {
	t.Parallel()
	be := &callLog{Runtime: newFakeBackend(nil)}
	l := lifecycle.New(be, lifecycle.Options{ReconcileInterval: -1})
	t.Cleanup(func() { l.Close() })
	ctx := context.Background()
	if err := l.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	be.take()
	s := runtime.InstanceSpec{ID: "walk", Image: "busybox"}
	for _, step := range []struct {
		name string
		do   func() error
		want string
	}{
		{"new start", func() error { _, err := l.Start(ctx, s); return err }, "Get Start"},
		{"repeated start", func() error { _, err := l.Start(ctx, s); return err }, "Get Start"},
		{"other request", func() error {
			o := s
			o.Image = "alpine"
			if _, err := l.Start(ctx, o); err == nil {
				t.Error("another request under a held ID started")
			}
			return nil
		}, "Get"},
		{"terminate", func() error { return l.Terminate(ctx, s.ID, time.Second) }, "Get Terminate"},
		{"terminate of nothing", func() error { _ = l.Terminate(ctx, s.ID, time.Second); return nil }, "Get"},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if got := be.take(); got != step.want {
			t.Errorf("%s called the back end: %q, want %q", step.name, got, step.want)
		}
	}
}

// specLog keeps the spec the back end was asked to start.
type specLog struct {
	runtime.Runtime
	got runtime.InstanceSpec
}

func (s *specLog) Start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	s.got = spec
	return s.Runtime.Start(ctx, spec)
}

// TestLifecycleAssemblesTheLabels: the back end gets the container's
// labels assembled (who, what was asked, the reservations), with the
// spec hash the lifecycle compares a repeated start against.
func TestLifecycleAssemblesTheLabels(t *testing.T) {
	t.Parallel()
	be := &specLog{Runtime: newFakeBackend(nil)}
	l := lifecycle.New(be, lifecycle.Options{ReconcileInterval: -1,
		Kinds: []runtime.Admission{lifecycle.BandwidthDefaults{Bandwidth: runtime.Bandwidth{EgressMbps: 100}}}})
	t.Cleanup(func() { l.Close() })
	s := runtime.InstanceSpec{ID: "labels", Image: "busybox", Labels: map[string]string{"team": "ml"}}
	if _, err := l.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	got := be.got.ContainerLabels
	if got[runtime.LabelInstanceID] != "labels" || got[runtime.LabelImage] != "busybox" ||
		got[runtime.LabelUserPrefix+"team"] != "ml" || got[runtime.LabelSpecHash] != s.Hash() || got[runtime.LabelBandwidth] == "" {
		t.Errorf("labels handed to the back end: %v", got)
	}
}
