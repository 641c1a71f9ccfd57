package containerd

import (
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// Below the free-space threshold, unused images go, least recently used
// first, until there is enough; an image a container uses is never removed.
func TestImageGCRemovesLeastRecentlyUsedNeverInUse(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	_, older := ownRegistry(t, "older:latest", 1024)
	_, newer := ownRegistry(t, "newer:latest", 1024)
	ns := testNamespace(t)
	r := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())
	for _, ref := range []string{older, newer} {
		if _, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "once", Image: ref, Command: []string{"exit", "0"}}); err != nil {
			t.Fatal(err)
		}
		if err := r.Terminate(ctx(t), "once", 0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // distinct last-used times
	}
	if _, err := r.Start(ctx(t), runtime.InstanceSpec{ID: "busy", Image: payloadRef, Command: []string{"sleep", "inf"}}); err != nil {
		t.Fatal(err)
	}
	cl, cctx := rawClient(t, daemon.Address, ns)

	// Enough is free after one removal: the older goes, the newer stays.
	removals := 0
	free := func() (uint64, error) {
		if removals > 0 {
			return 1 << 40, nil
		}
		return 0, nil
	}
	removed, err := r.be.CollectImages(ctx(t), 1<<30, func() (uint64, error) {
		f, err := free()
		removals++
		return f, err
	})
	if err != nil || len(removed) != 1 || removed[0] != older {
		t.Fatalf("removed %v, %v; want only %s", removed, err, older)
	}
	if _, err := cl.GetImage(cctx, older); !errdefs.IsNotFound(err) {
		t.Errorf("older image still there: %v", err)
	}
	// Never enough free: every unused image goes, the one in use stays.
	removed, err = r.be.CollectImages(ctx(t), 1<<30, func() (uint64, error) { return 0, nil })
	if err != nil || len(removed) != 1 || removed[0] != newer {
		t.Fatalf("removed %v, %v; want only %s", removed, err, newer)
	}
	if _, err := cl.GetImage(cctx, payloadRef); err != nil {
		t.Errorf("the image in use was removed: %v", err)
	}
	if inst, err := r.Get(ctx(t), "busy"); err != nil || inst.Status != runtime.StatusRunning {
		t.Errorf("instance using it: %+v %v", inst, err)
	}
}

// A pinned image is kept by image GC however short the disk is, until its
// pin expires; then it goes like any unused image.
func TestImageGCKeepsPinnedUntilExpiry(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	_, pinned := ownRegistry(t, "pinned:latest", 1024)
	_, loose := ownRegistry(t, "loose:latest", 1024)
	ns := testNamespace(t)
	r := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())
	for _, ref := range []string{pinned, loose} {
		if _, err := r.be.PullImage(ctx(t), ref, nil, func(events.PullProgress) {}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.be.PinImage(ctx(t), pinned, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	never := func() (uint64, error) { return 0, nil }
	removed, err := r.be.CollectImages(ctx(t), 1<<30, never)
	if err != nil || len(removed) != 1 || removed[0] != loose {
		t.Fatalf("removed %v, %v; want only the unpinned %s", removed, err, loose)
	}
	imgs, err := r.be.Images(ctx(t))
	if err != nil || len(imgs) != 1 || imgs[0].Ref != pinned || imgs[0].PinnedUntil.Before(time.Now()) {
		t.Fatalf("images after GC: %+v, %v; want the pinned %s, pinned", imgs, err, pinned)
	}
	// The pin runs out: the next collection removes the image.
	if err := r.be.PinImage(ctx(t), pinned, time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	removed, err = r.be.CollectImages(ctx(t), 1<<30, never)
	if err != nil || len(removed) != 1 || removed[0] != pinned {
		t.Fatalf("removed %v, %v after the pin expired; want %s", removed, err, pinned)
	}
	cl, cctx := rawClient(t, daemon.Address, ns)
	if _, err := cl.GetImage(cctx, pinned); !errdefs.IsNotFound(err) {
		t.Errorf("image whose pin expired still there: %v", err)
	}
}
