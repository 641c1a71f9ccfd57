package docker

import (
	"fmt"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/events"
)

// Image GC removes the images the agent pulled, but never a pinned one
// until its pin expires; the daemon's images the agent never pulled or
// used are not its to remove.
func TestImageGCKeepsPinnedUntilExpiry(t *testing.T) {
	for _, name := range []string{debian, moby} {
		t.Run(name, func(t *testing.T) {
			d := needDockerd(t, name)
			reg := testenv.StartRegistry()
			t.Cleanup(reg.Close)
			var pinned, loose string
			for _, p := range []*string{&pinned, &loose} {
				ref, err := reg.PushPayload(fmt.Sprintf("gc-%d:1", time.Now().UnixNano()))
				if err != nil {
					t.Fatal(err)
				}
				*p = ref
			}
			// Another agent's (another state dir's) image on the same daemon.
			foreign := newScope(t, d).open(t, conformance.NewRecorder(), nil)
			stranger, err := reg.PushPayload(fmt.Sprintf("gc-foreign-%d:1", time.Now().UnixNano()))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := foreign.PullImage(conformance.Ctx(t), stranger, nil, func(events.PullProgress) {}); err != nil {
				t.Fatal(err)
			}
			r := newScope(t, d).open(t, conformance.NewRecorder(), nil)
			for _, ref := range []string{pinned, loose} {
				if _, err := r.PullImage(conformance.Ctx(t), ref, nil, func(events.PullProgress) {}); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.PinImage(conformance.Ctx(t), pinned, time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			never := func() (uint64, error) { return 0, nil }
			removed, err := r.CollectImages(conformance.Ctx(t), 1<<30, never)
			if err != nil || len(removed) != 1 || removed[0] != loose {
				t.Fatalf("removed %v, %v; want only the unpinned %s", removed, err, loose)
			}
			if _, err := r.client.ImageInspect(conformance.Ctx(t), pinned); err != nil {
				t.Fatalf("pinned image gone: %v", err)
			}
			if err := r.PinImage(conformance.Ctx(t), pinned, time.Now().Add(-time.Second)); err != nil {
				t.Fatal(err)
			}
			removed, err = r.CollectImages(conformance.Ctx(t), 1<<30, never)
			if err != nil || len(removed) != 1 || removed[0] != pinned {
				t.Fatalf("removed %v, %v after the pin expired; want %s", removed, err, pinned)
			}
			if _, err := r.client.ImageInspect(conformance.Ctx(t), pinned); !errdefs.IsNotFound(convertErr(err)) {
				t.Errorf("image whose pin expired still there: %v", err)
			}
			if _, err := r.client.ImageInspect(conformance.Ctx(t), stranger); err != nil {
				t.Errorf("an image this agent never pulled was removed: %v", err)
			}
		})
	}
}
