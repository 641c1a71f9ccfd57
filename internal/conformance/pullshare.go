package conformance

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// A pre-pull and two starts of the same image at the same time share one
// fetch: the registry serves each blob once, and each start reports the
// shared pull's progress as its own.
func testOnePullPerImage(t *testing.T, h Harness) {
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	ref, err := reg.PushPayloadWithPadding(fmt.Sprintf("shared-pull-%d:1", time.Now().UnixNano()), 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	reg.Throttle(1 << 20)
	a := open(t, h.NewScope(t), nil)
	if _, pulling, err := a.PullImage(Ctx(t), lifecycle.ImagePull{Ref: ref}); err != nil || !pulling {
		t.Fatalf("pre-pull: pulling %v, %v; want pulling", pulling, err)
	}
	// The pre-pull is fetching layers once it reports progress.
	waitImageEvent(t, a.Events, ref, events.TypeImagePulling, 2)
	ids := []string{uniqueID(t, "shared-a"), uniqueID(t, "shared-b")}
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	for i, id := range ids {
		wg.Go(func() {
			_, errs[i] = a.Start(Ctx(t), runtime.InstanceSpec{ID: id, Image: ref, Command: []string{"sleep", "inf"}})
		})
	}
	wg.Wait()
	for i, id := range ids {
		if errs[i] != nil {
			t.Fatalf("start %s during the pre-pull: %v", id, errs[i])
		}
		t.Cleanup(func() { _ = a.Terminate(Ctx(t), id, time.Second) })
	}
	waitImageEvent(t, a.Events, ref, events.TypeImagePulled, 1)
	gets := reg.BlobGets()
	// The payload's layer may be held already (a daemon shares layers
	// among images); the configuration and the padding are new.
	if len(gets) < 2 {
		t.Fatalf("blob GETs %v; want at least the configuration and the padding layer", gets)
	}
	for path, n := range gets {
		if n != 1 {
			t.Errorf("registry served %s %d times; want once (all GETs: %v)", path, n, gets)
		}
	}
	for _, id := range ids {
		if a.Events.Count(id, events.TypeInstancePulling) != 1 {
			t.Errorf("start %s: %d instance.pulling events; want 1 (events: %s)", id, a.Events.Count(id, events.TypeInstancePulling), a.Events.Summary())
		}
		progressed := false
		for _, e := range a.Events.All() {
			if e.InstanceID == id && e.Type == events.TypeInstancePullProgress && e.Progress != nil && e.Progress.TotalBytes >= 4<<20 {
				progressed = true
			}
		}
		if !progressed {
			t.Errorf("start %s reported no pull progress of the shared pull: %s", id, summaryOf(a.Events, id))
		}
	}
}

// summaryOf lists the types of id's events.
func summaryOf(r *Recorder, id string) string {
	var types []string
	for _, e := range r.All() {
		if e.InstanceID == id {
			types = append(types, e.Type)
		}
	}
	return strings.Join(types, " ")
}

// A start without credentials that comes while a pre-pull with credentials
// of a private image runs does not ride it: it is refused, as it would be
// had the image been present. A start with the same credentials shares the
// pull.
func testPrivatePullNotShared(t *testing.T, h Harness) {
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	ref, err := reg.PushPayloadWithPadding(fmt.Sprintf("private-shared-pull-%d:1", time.Now().UnixNano()), 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	reg.RequireBasicAuth("tenant", "s3cret")
	reg.Throttle(1 << 20)
	a := open(t, h.NewScope(t), nil)
	auth := &runtime.RegistryAuth{Username: "tenant", Password: "s3cret"}
	if _, pulling, err := a.PullImage(Ctx(t), lifecycle.ImagePull{Ref: ref, RegistryAuth: auth}); err != nil || !pulling {
		t.Fatalf("pre-pull with credentials: pulling %v, %v", pulling, err)
	}
	waitImageEvent(t, a.Events, ref, events.TypeImagePulling, 2)
	freeload, owner := uniqueID(t, "freeload"), uniqueID(t, "owner")
	var wg sync.WaitGroup
	var freeErr, ownerErr error
	wg.Go(func() {
		_, freeErr = a.Start(Ctx(t), runtime.InstanceSpec{ID: freeload, Image: ref, Command: []string{"sleep", "inf"}})
	})
	wg.Go(func() {
		_, ownerErr = a.Start(Ctx(t), runtime.InstanceSpec{ID: owner, Image: ref, Command: []string{"sleep", "inf"}, RegistryAuth: auth})
	})
	wg.Wait()
	if !errdefs.IsUnauthorized(freeErr) {
		t.Errorf("a start without credentials during a private pre-pull: %v; want Unauthenticated", freeErr)
	}
	assertGone(t, a, freeload)
	if ownerErr != nil {
		t.Fatalf("a start with the credentials during the pre-pull: %v", ownerErr)
	}
	t.Cleanup(func() { _ = a.Terminate(Ctx(t), owner, time.Second) })
	for path, n := range reg.BlobGets() {
		if n != 1 {
			t.Errorf("registry served %s %d times; want once", path, n)
		}
	}
}
