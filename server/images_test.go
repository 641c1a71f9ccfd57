package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// fakeImages is a back end whose images live in memory; a pull waits
// until release is closed.
type fakeImages struct {
	fakeRuntime
	release chan struct{}

	mu     sync.Mutex
	images map[string]runtime.Image
	pulls  int
}

func (f *fakeImages) Images(context.Context) ([]runtime.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []runtime.Image
	for _, img := range f.images {
		out = append(out, img)
	}
	return out, nil
}

func (f *fakeImages) PullImage(ctx context.Context, ref string, _ *runtime.RegistryAuth, progress func(events.PullProgress)) (runtime.Image, error) {
	f.mu.Lock()
	f.pulls++
	f.mu.Unlock()
	progress(events.PullProgress{DoneBytes: 1, TotalBytes: 2})
	select {
	case <-f.release:
	case <-ctx.Done():
		return runtime.Image{}, ctx.Err()
	}
	img := runtime.Image{Ref: ref, Digest: "sha256:" + strings.Repeat("a", 64), SizeBytes: 2, LastUsed: time.Now()}
	f.mu.Lock()
	f.images[ref] = img
	f.mu.Unlock()
	return img, nil
}

func (f *fakeImages) PinImage(_ context.Context, ref string, until time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.images[ref]
	if !ok {
		return errdefs.ErrNotFound
	}
	img.PinnedUntil = until
	f.images[ref] = img
	return nil
}

func (f *fakeImages) RemoveImage(_ context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.images[ref]
	switch {
	case !ok:
		return fmt.Errorf("image %s: %w", ref, errdefs.ErrNotFound)
	case img.InUse:
		return fmt.Errorf("image %s is in use: %w", ref, errdefs.ErrConflict)
	}
	delete(f.images, ref)
	return nil
}

func (f *fakeImages) Close() error { return nil }

type fakeDrain struct{ drained bool }

func (d *fakeDrain) SetDrain(context.Context, string, time.Time) error { d.drained = true; return nil }
func (d *fakeDrain) ClearDrain(context.Context) error                  { d.drained = false; return nil }
func (d *fakeDrain) Drained(context.Context) (string, time.Time, bool, error) {
	return "maintenance", time.Time{}, d.drained, nil
}

func newImagesServer(t *testing.T) (*testServer, *fakeImages, *fakeDrain) {
	t.Helper()
	be := &fakeImages{release: make(chan struct{}), images: map[string]runtime.Image{
		"docker.io/library/busy:1": {Ref: "docker.io/library/busy:1", Digest: "sha256:" + strings.Repeat("b", 64), SizeBytes: 5, LastUsed: time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC), InUse: true},
	}}
	hub := events.NewHub(0, nil)
	// Close calls off a pull the test never released.
	drain := &fakeDrain{}
	l := lifecycle.New(be, lifecycle.Options{Events: hub, ReconcileInterval: -1, Drain: drain})
	t.Cleanup(func() { l.Close() })
	ts := newTestServer(t, l, func(o *Options) { o.Hub = hub; o.Drain = drain })
	return ts, be, drain
}

func TestImagePullRequestsRefusedByField(t *testing.T) {
	t.Parallel()
	ts, be, _ := newImagesServer(t)
	for _, tc := range []struct{ body, field string }{
		{`{}`, "image"},
		{`{"image": "bad image!"}`, "image"},
		{`{"image": "ok:1", "pin_hours": -1}`, "pin_hours"},
		{`{"image": "ok:1", "pin_hours": 1000000}`, "pin_hours"},
		{`{"image": "ok:1", "registry_auth": {"password": "p"}}`, "registry_auth.username"},
		{`{"image": "ok:1", "extra": 1}`, "extra"},
	} {
		rec := ts.do(t, http.MethodPost, "/images/pull", tc.body)
		if rec.Code != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", tc.body, rec.Code, rec.Body)
			continue
		}
		if body := errorBody(t, rec); body.Field != tc.field {
			t.Errorf("%s: field %q, want %q", tc.body, body.Field, tc.field)
		}
	}
	if rec := ts.do(t, http.MethodDelete, "/images", `{"image": ""}`); rec.Code != http.StatusBadRequest || errorBody(t, rec).Field != "image" {
		t.Errorf("DELETE without an image: %d %s", rec.Code, rec.Body)
	}
	if be.pulls != 0 {
		t.Errorf("%d pulls for refused requests", be.pulls)
	}
}

func TestImagePullDetachedJoinedThenPresent(t *testing.T) {
	t.Parallel()
	ts, be, drain := newImagesServer(t)
	sub, _, _ := ts.hub.Subscribe(0, false)
	defer sub.Close()
	// The second request joins the first, and its pin is kept.
	for i, body := range []string{`{"image": "nginx:1"}`, `{"image": "docker.io/library/nginx:1", "pin_hours": 2}`} {
		rec := ts.do(t, http.MethodPost, "/images/pull", body)
		var resp ImagePullResponse
		decodeInto(t, rec, &resp)
		if rec.Code != http.StatusAccepted || resp != (ImagePullResponse{Image: "docker.io/library/nginx:1", Status: "pulling"}) {
			t.Fatalf("pre-pull #%d: %d %s; want 202 pulling", i+1, rec.Code, rec.Body)
		}
	}
	close(be.release)
	var types []string
	for e := range sub.C() {
		types = append(types, e.Type)
		if e.Type == events.TypeImagePulled {
			if e.Image != "docker.io/library/nginx:1" || e.Digest == "" || e.SizeBytes != 2 {
				t.Errorf("image.pulled %+v", e)
			}
			break
		}
	}
	if want := []string{events.TypeImagePulling, events.TypeImagePulling, events.TypeImagePulled}; strings.Join(types, ",") != strings.Join(want, ",") {
		t.Errorf("events %v, want %v", types, want)
	}
	if be.pulls != 1 {
		t.Errorf("%d pulls for two requests while pulling, want 1", be.pulls)
	}

	rec := ts.do(t, http.MethodPost, "/images/pull", `{"image": "nginx:1"}`)
	var resp ImagePullResponse
	decodeInto(t, rec, &resp)
	if rec.Code != http.StatusOK || resp.Status != "present" || resp.SizeBytes != 2 || !strings.HasPrefix(resp.Digest, "sha256:") {
		t.Errorf("pre-pull of a present image: %d %s; want 200 present", rec.Code, rec.Body)
	}

	rec = ts.do(t, http.MethodGet, "/images", "")
	var list ImageList
	decodeInto(t, rec, &list)
	if rec.Code != http.StatusOK || len(list.Images) != 2 {
		t.Fatalf("GET /images: %d %s", rec.Code, rec.Body)
	}
	for _, img := range list.Images {
		switch img.Image {
		case "docker.io/library/nginx:1":
			if img.PinnedUntil == nil || img.PinnedUntil.Before(time.Now().Add(time.Hour)) || img.InUse {
				t.Errorf("pinned image listed %+v", img)
			}
		case "docker.io/library/busy:1":
			if img.PinnedUntil != nil || !img.InUse {
				t.Errorf("busy image listed %+v", img)
			}
		}
	}
	if !strings.Contains(rec.Body.String(), `"pinned_until":null`) {
		t.Errorf("an unpinned image's pinned_until is not null: %s", rec.Body)
	}

	drain.drained = true
	rec = ts.do(t, http.MethodPost, "/images/pull", `{"image": "other:1"}`)
	if rec.Code != http.StatusServiceUnavailable || errorBody(t, rec).Code != "draining" {
		t.Errorf("pre-pull on a drained host: %d %s; want 503 draining", rec.Code, rec.Body)
	}
}

func TestImageRemoveAnswers(t *testing.T) {
	t.Parallel()
	ts, be, _ := newImagesServer(t)
	be.images["docker.io/library/idle:1"] = runtime.Image{Ref: "docker.io/library/idle:1"}
	for _, tc := range []struct {
		image string
		code  int
	}{
		{"busy:1", http.StatusConflict},
		{"nothere:1", http.StatusNotFound},
		{"idle:1", http.StatusOK},
		{"idle:1", http.StatusNotFound},
	} {
		rec := ts.do(t, http.MethodDelete, "/images", `{"image": "`+tc.image+`"}`)
		if rec.Code != tc.code {
			t.Errorf("DELETE %s: %d %s, want %d", tc.image, rec.Code, rec.Body, tc.code)
		}
	}
	if _, ok := be.images["docker.io/library/busy:1"]; !ok {
		t.Error("the image in use was removed")
	}
}

// A pin never shortens the one an image already has.
func TestImagePinKeepsTheLaterExpiry(t *testing.T) {
	t.Parallel()
	ts, be, _ := newImagesServer(t)
	long := time.Now().Add(48 * time.Hour).UTC()
	be.images["docker.io/library/kept:1"] = runtime.Image{Ref: "docker.io/library/kept:1", PinnedUntil: long}
	if rec := ts.do(t, http.MethodPost, "/images/pull", `{"image": "kept:1", "pin_hours": 1}`); rec.Code != http.StatusOK {
		t.Fatalf("pre-pull of a pinned image: %d %s", rec.Code, rec.Body)
	}
	if got := be.images["docker.io/library/kept:1"].PinnedUntil; !got.Equal(long) {
		t.Errorf("pinned until %v after a 1-hour pin, want the earlier pin's %v", got, long)
	}
	if rec := ts.do(t, http.MethodPost, "/images/pull", `{"image": "kept:1", "pin_hours": 72}`); rec.Code != http.StatusOK {
		t.Fatalf("pre-pull of a pinned image: %d %s", rec.Code, rec.Body)
	}
	if got := be.images["docker.io/library/kept:1"].PinnedUntil; !got.After(long) {
		t.Errorf("pinned until %v after a 72-hour pin, want later than %v", got, long)
	}
}
