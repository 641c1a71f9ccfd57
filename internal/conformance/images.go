package conformance

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// imageEvents are the image.* events about ref, in order.
func imageEvents(r *Recorder, ref string) []events.Event {
	var out []events.Event
	for _, e := range r.All() {
		if e.Image == ref && strings.HasPrefix(e.Type, "image.") {
			out = append(out, e)
		}
	}
	return out
}

// waitImageEvent waits for the n-th (from 1) event of type typ about ref.
func waitImageEvent(t *testing.T, r *Recorder, ref, typ string, n int) events.Event {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		seen := 0
		for _, e := range imageEvents(r, ref) {
			if e.Type == typ {
				if seen++; seen == n {
					return e
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no %s event #%d for %s; got %s", typ, n, ref, r.Summary())
	panic("unreachable")
}

func findImage(t *testing.T, a *Agent, ref string) (runtime.Image, bool) {
	t.Helper()
	imgs, err := a.Images(Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs {
		if img.Ref == ref {
			return img, true
		}
	}
	return runtime.Image{}, false
}

// A pre-pull answers at once and pulls detached; a second request while
// it runs joins it (one pull, one image.pulled); its events come in order;
// the image then shows in the inventory, is answered present, can be
// pinned, is refused removal while a rental uses it and is gone from the
// inventory once removed. A missing image fails with not_found.
func testImages(t *testing.T, h Harness) {
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	ref, err := reg.PushPayloadWithPadding(fmt.Sprintf("prepull-%d:1", time.Now().UnixNano()), 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	reg.Throttle(1 << 20)
	a := open(t, h.NewScope(t), nil)
	if _, ok := findImage(t, a, ref); ok {
		t.Fatalf("%s listed before any pull", ref)
	}
	for i := range 2 {
		if _, pulling, err := a.PullImage(Ctx(t), lifecycle.ImagePull{Ref: ref}); err != nil || !pulling {
			t.Fatalf("pre-pull #%d: pulling %v, %v; want pulling", i+1, pulling, err)
		}
	}
	pulled := waitImageEvent(t, a.Events, ref, events.TypeImagePulled, 1)
	evs := imageEvents(a.Events, ref)
	if evs[0].Type != events.TypeImagePulling || evs[0].Progress != nil {
		t.Errorf("first image event %+v; want image.pulling without progress", evs[0])
	}
	if last := evs[len(evs)-1]; last.Type != events.TypeImagePulled {
		t.Errorf("last image event %s; want image.pulled (events:%s)", last.Type, a.Events.Summary())
	}
	progressed := false
	for _, e := range evs[1 : len(evs)-1] {
		if e.Type != events.TypeImagePulling || e.Progress == nil || e.Progress.DoneBytes > e.Progress.TotalBytes {
			t.Errorf("event between the first and image.pulled: %+v", e)
		}
		progressed = progressed || e.Progress != nil
	}
	if !progressed {
		t.Errorf("no image.pulling event with progress during a throttled pull: %s", a.Events.Summary())
	}
	if !strings.HasPrefix(pulled.Digest, "sha256:") || pulled.SizeBytes < 2<<20 || pulled.Status != "pulled" {
		t.Errorf("image.pulled %+v; want a sha256 digest and at least 2 MiB", pulled)
	}
	time.Sleep(200 * time.Millisecond) // a second pull, had there been one, would end now
	if n := len(imageEvents(a.Events, ref)); n != len(evs) {
		t.Errorf("events after image.pulled: %s", a.Events.Summary())
	}
	reg.Throttle(0)

	img, ok := findImage(t, a, ref)
	if !ok || img.Digest != pulled.Digest || img.SizeBytes != pulled.SizeBytes || img.InUse || !img.PinnedUntil.IsZero() || img.LastUsed.IsZero() {
		t.Fatalf("inventory entry %+v (listed %v); want the pulled image, unused and unpinned", img, ok)
	}
	present, pulling, err := a.PullImage(Ctx(t), lifecycle.ImagePull{Ref: ref, Pin: time.Hour})
	if err != nil || pulling || present.Digest != pulled.Digest {
		t.Fatalf("pre-pull of a present image: %+v pulling %v, %v; want it present", present, pulling, err)
	}
	if img, _ := findImage(t, a, ref); img.PinnedUntil.Before(time.Now().Add(59 * time.Minute)) {
		t.Errorf("pinned for an hour, listed pinned until %v", img.PinnedUntil)
	}

	id := uniqueID(t, "user")
	if _, err := a.Start(Ctx(t), runtime.InstanceSpec{ID: id, Image: ref, Command: []string{"sleep", "inf"}}); err != nil {
		t.Fatal(err)
	}
	if a.Events.Count(id, events.TypeInstancePulling) != 0 {
		t.Errorf("a start of a pre-pulled image pulled it: %s", a.Events.Summary())
	}
	if img, _ := findImage(t, a, ref); !img.InUse {
		t.Errorf("image of a running rental listed %+v; want in use", img)
	}
	if err := a.RemoveImage(Ctx(t), ref); !errdefs.IsConflict(err) {
		t.Fatalf("removing an image a rental uses: %v; want Conflict", err)
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.RemoveImage(Ctx(t), ref); err != nil {
		t.Fatalf("removing an unused image: %v", err)
	}
	if img, ok := findImage(t, a, ref); ok {
		t.Fatalf("removed image still listed: %+v", img)
	}
	if err := a.RemoveImage(Ctx(t), ref); !errdefs.IsNotFound(err) {
		t.Fatalf("removing it again: %v; want NotFound", err)
	}

	missing := reg.Host + "/no-such-image:1"
	if _, pulling, err := a.PullImage(Ctx(t), lifecycle.ImagePull{Ref: missing}); err != nil || !pulling {
		t.Fatalf("pre-pull of a missing image: pulling %v, %v; want accepted", pulling, err)
	}
	failed := waitImageEvent(t, a.Events, missing, events.TypeImageFailed, 1)
	if failed.Code != runtime.PullNotFound || failed.Error == "" {
		t.Errorf("image.failed %+v; want code %s and an error", failed, runtime.PullNotFound)
	}
}

// An image pre-pulled with credentials is handed to no start and no
// pre-pull without them.
func testImagePrivatePrePull(t *testing.T, h Harness) {
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	ref, err := reg.PushPayload(fmt.Sprintf("private-prepull-%d:1", time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	reg.RequireBasicAuth("tenant", "s3cret")
	a := open(t, h.NewScope(t), nil)
	auth := &runtime.RegistryAuth{Username: "tenant", Password: "s3cret"}
	if _, pulling, err := a.PullImage(Ctx(t), lifecycle.ImagePull{Ref: ref, RegistryAuth: auth}); err != nil || !pulling {
		t.Fatalf("pre-pull with credentials: pulling %v, %v", pulling, err)
	}
	waitImageEvent(t, a.Events, ref, events.TypeImagePulled, 1)
	if _, ok := findImage(t, a, ref); !ok {
		t.Fatalf("%s not listed after its pre-pull", ref)
	}
	other := uniqueID(t, "freeload")
	if _, err := a.Start(Ctx(t), runtime.InstanceSpec{ID: other, Image: ref, Command: []string{"sleep", "inf"}}); !errdefs.IsUnauthorized(err) {
		t.Fatalf("a start without credentials of a privately pre-pulled image: %v, want Unauthenticated", err)
	}
	assertGone(t, a, other)
	// A pre-pull without credentials is not told the image is present.
	if _, pulling, err := a.PullImage(Ctx(t), lifecycle.ImagePull{Ref: ref}); err != nil || !pulling {
		t.Fatalf("pre-pull without credentials: pulling %v, %v; want a pull the registry decides", pulling, err)
	}
	failed := waitImageEvent(t, a.Events, ref, events.TypeImageFailed, 1)
	if failed.Code != runtime.PullUnauthorized {
		t.Errorf("image.failed %+v; want code %s", failed, runtime.PullUnauthorized)
	}
	id := uniqueID(t, "owner")
	if _, err := a.Start(Ctx(t), runtime.InstanceSpec{ID: id, Image: ref, Command: []string{"sleep", "inf"}, RegistryAuth: auth}); err != nil {
		t.Fatalf("a start with the credentials: %v", err)
	}
	if err := a.Terminate(Ctx(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
}
