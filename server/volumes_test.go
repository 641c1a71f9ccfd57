package server

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	"github.com/host-agent/host-agent/runtime/volume"
)

// fakeVolumes keeps volumes in memory, with runtime/volume's rules: an
// identical create answers the volume, another owner or size conflicts,
// an attached volume is not deleted.
type fakeVolumes struct {
	mu   sync.Mutex
	vols map[string]volume.Volume
}

// refusal is an error about one field, of an errdefs kind.
type refusal struct {
	field string
	kind  error
}

func (e *refusal) Error() string      { return e.field + ": " + e.kind.Error() }
func (e *refusal) ErrorField() string { return e.field }
func (e *refusal) Unwrap() error      { return e.kind }

func (f *fakeVolumes) Create(_ context.Context, s volume.Spec) (volume.Volume, bool, error) {
	if err := s.Validate(); err != nil {
		return volume.Volume{}, false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.vols[s.Name]; ok {
		if v.Owner != s.Owner || v.SizeGB != s.SizeGB {
			return volume.Volume{}, false, &refusal{"name", errdefs.ErrConflict}
		}
		return v, false, nil
	}
	v := volume.Volume{Name: s.Name, Owner: s.Owner, SizeGB: s.SizeGB, CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Path: "/volumes/" + s.Name}
	f.vols[s.Name] = v
	return v, true, nil
}

func (f *fakeVolumes) List(context.Context) []volume.Volume {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []volume.Volume
	for _, v := range f.vols {
		v.UsedBytes = 4096
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (f *fakeVolumes) Delete(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[name]
	switch {
	case !ok:
		return fmt.Errorf("volume %q: %w", name, errdefs.ErrNotFound)
	case v.AttachedTo != "":
		return &refusal{"name", errdefs.ErrConflict}
	}
	delete(f.vols, name)
	return nil
}

func (f *fakeVolumes) Attach(id string, reqs []runtime.VolumeRequest) ([]runtime.VolumeMount, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []runtime.VolumeMount
	for i, r := range reqs {
		v, ok := f.vols[r.Name]
		switch {
		case !ok:
			return nil, &refusal{fmt.Sprintf("volumes[%d].name", i), errdefs.ErrNotFound}
		case v.Owner != r.Owner:
			return nil, &refusal{fmt.Sprintf("volumes[%d].owner", i), errdefs.ErrPermissionDenied}
		case v.AttachedTo != "" && v.AttachedTo != id:
			return nil, &refusal{fmt.Sprintf("volumes[%d].name", i), errdefs.ErrConflict}
		}
		out = append(out, runtime.VolumeMount{Name: r.Name, HostPath: v.Path, ContainerPath: r.MountPath})
	}
	for _, r := range reqs {
		v := f.vols[r.Name]
		v.AttachedTo = id
		f.vols[r.Name] = v
	}
	return out, nil
}

func (f *fakeVolumes) Detach(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, v := range f.vols {
		if v.AttachedTo == id {
			v.AttachedTo = ""
			f.vols[name] = v
		}
	}
}

func (f *fakeVolumes) RestoreAttachment(string, []string) error { return nil }

func (f *fakeVolumes) Attachments() map[string][]string { return nil }

// newVolumesServer serves a store of volumes, with a Lifecycle attaching
// them to rentals of a back end that starts what it is given and records
// the mounts.
func newVolumesServer(t *testing.T) (*testServer, *fakeVolumes, *fakeDrain, *[]runtime.VolumeMount) {
	t.Helper()
	store := &fakeVolumes{vols: map[string]volume.Volume{}}
	var mounted []runtime.VolumeMount
	be := &fakeRuntime{
		list: func(context.Context) ([]runtime.Instance, error) { return nil, nil },
		get: func(_ context.Context, id string) (runtime.Instance, error) {
			return runtime.Instance{}, fmt.Errorf("%s: %w", id, errdefs.ErrNotFound)
		},
		start: func(_ context.Context, s runtime.InstanceSpec) (runtime.Instance, error) {
			mounted = s.VolumeMounts
			return runtime.Instance{ID: s.ID, Status: runtime.StatusRunning}, nil
		},
	}
	l := lifecycle.New(closable{be}, lifecycle.Options{Kinds: []runtime.Admission{lifecycle.VolumeReservations{Store: store}}, ReconcileInterval: -1})
	t.Cleanup(func() { l.Close() })
	drain := &fakeDrain{}
	ts := newTestServer(t, l, func(o *Options) { o.Volumes = store; o.Drain = drain })
	return ts, store, drain, &mounted
}

// closable is a fakeRuntime that a Lifecycle may close.
type closable struct{ *fakeRuntime }

func (closable) Close() error { return nil }

func TestVolumeRoutes(t *testing.T) {
	t.Parallel()
	ts, store, drain, _ := newVolumesServer(t)
	rec := ts.do(t, http.MethodPost, "/volumes", `{"name":"ds","owner":"tenant-7","size_gb":10}`)
	var v VolumeInfo
	decodeInto(t, rec, &v)
	if rec.Code != http.StatusCreated || v.Name != "ds" || v.Owner != "tenant-7" || v.SizeGB != 10 || v.AttachedTo != nil {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	if rec := ts.do(t, http.MethodPost, "/volumes", `{"name":"ds","owner":"tenant-7","size_gb":10}`); rec.Code != http.StatusOK {
		t.Errorf("identical create: %d %s, want 200", rec.Code, rec.Body)
	}
	if rec := ts.do(t, http.MethodPost, "/volumes", `{"name":"ds","owner":"tenant-8","size_gb":10}`); rec.Code != http.StatusConflict || errorBody(t, rec).Field != "name" {
		t.Errorf("create over another owner's: %d %s, want 409 naming name", rec.Code, rec.Body)
	}
	for _, tc := range []struct{ body, field string }{
		{`{"owner":"o","size_gb":1}`, "name"},
		{`{"name":"../etc","owner":"o","size_gb":1}`, "name"},
		{`{"name":"a b","owner":"o","size_gb":1}`, "name"},
		{`{"name":"v","size_gb":1}`, "owner"},
		{`{"name":"v","owner":"o"}`, "size_gb"},
		{`{"name":"v","owner":"o","size_gb":-1}`, "size_gb"},
		{`{"name":"v","owner":"o","size_gb":1000000}`, "size_gb"},
		{`{"name":"v","owner":"o","size_gb":"1"}`, "size_gb"},
		{`{"name":"v","owner":"o","size_gb":1,"path":"/"}`, "path"},
	} {
		rec := ts.do(t, http.MethodPost, "/volumes", tc.body)
		if rec.Code != http.StatusBadRequest || errorBody(t, rec).Field != tc.field {
			t.Errorf("%s: %d %s, want 400 naming %s", tc.body, rec.Code, rec.Body, tc.field)
		}
	}
	if len(store.List(context.Background())) != 1 {
		t.Errorf("refused creates left volumes: %+v", store.vols)
	}

	rec = ts.do(t, http.MethodGet, "/volumes", "")
	if want := `{"volumes":[{"name":"ds","owner":"tenant-7","size_gb":10,"used_bytes":4096,"created_at":"2026-01-02T03:04:05Z","attached_to":null}]}`; rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != want {
		t.Errorf("list: %d %s, want %s", rec.Code, rec.Body, want)
	}

	if rec := ts.do(t, http.MethodDelete, "/volumes/nope", ""); rec.Code != http.StatusNotFound {
		t.Errorf("delete unknown: %d %s", rec.Code, rec.Body)
	}
	if rec := ts.do(t, http.MethodDelete, "/volumes/bad%20name", ""); rec.Code != http.StatusBadRequest || errorBody(t, rec).Field != "name" {
		t.Errorf("delete bad name: %d %s", rec.Code, rec.Body)
	}
	drain.drained = true
	if rec := ts.do(t, http.MethodPost, "/volumes", `{"name":"more","owner":"tenant-7","size_gb":1}`); rec.Code != http.StatusServiceUnavailable || errorBody(t, rec).Code != "draining" {
		t.Errorf("create on a drained host: %d %s, want 503 draining", rec.Code, rec.Body)
	}
	drain.drained = false
	if rec := ts.do(t, http.MethodDelete, "/volumes/ds", ""); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"name":"ds"`) {
		t.Errorf("delete: %d %s", rec.Code, rec.Body)
	}
	if len(store.List(context.Background())) != 0 {
		t.Error("deleted volume still listed")
	}
}

func TestStartAttachesVolumes(t *testing.T) {
	t.Parallel()
	ts, store, _, mounted := newVolumesServer(t)
	if _, _, err := store.Create(context.Background(), volume.Spec{Name: "ds", Owner: "tenant-7", SizeGB: 1}); err != nil {
		t.Fatal(err)
	}
	start := func(id, vols string) *httptest.ResponseRecorder {
		return ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"`+id+`","image":"nginx","volumes":`+vols+`}`)
	}
	for _, tc := range []struct {
		vols  string
		code  int
		field string
	}{
		{`[{"name":"ds","owner":"tenant-8","mount_path":"/data"}]`, http.StatusForbidden, "volumes[0].owner"},
		{`[{"name":"nope","owner":"tenant-7","mount_path":"/data"}]`, http.StatusNotFound, "volumes[0].name"},
		{`[{"name":"ds","owner":"tenant-7","mount_path":"data"}]`, http.StatusBadRequest, "volumes[0].mount_path"},
		{`[{"name":"ds","owner":"tenant-7","mount_path":"/root/.ssh"}]`, http.StatusBadRequest, "volumes[0].mount_path"},
		{`[{"name":"ds","owner":"tenant-7","mount_path":"/proc/x"}]`, http.StatusBadRequest, "volumes[0].mount_path"},
		{`[{"name":"ds","owner":"tenant-7","mount_path":"/"}]`, http.StatusBadRequest, "volumes[0].mount_path"},
		{`[{"name":"ds","owner":"tenant-7","mount_path":"/a"},{"name":"ds","owner":"tenant-7","mount_path":"/b"}]`, http.StatusBadRequest, "volumes[1].name"},
		{`[{"name":"../x","owner":"tenant-7","mount_path":"/data"}]`, http.StatusBadRequest, "volumes[0].name"},
		{`[{"name":"ds","owner":"","mount_path":"/data"}]`, http.StatusBadRequest, "volumes[0].owner"},
	} {
		rec := start("i-refused", tc.vols)
		if rec.Code != tc.code || errorBody(t, rec).Field != tc.field {
			t.Errorf("%s: %d %s, want %d naming %s", tc.vols, rec.Code, rec.Body, tc.code, tc.field)
		}
	}
	if got := store.List(context.Background())[0].AttachedTo; got != "" || *mounted != nil {
		t.Fatalf("refused starts attached the volume to %q, mounted %+v", got, *mounted)
	}
	if rec := start("i-1", `[{"name":"ds","owner":"tenant-7","mount_path":"/data"}]`); rec.Code != http.StatusOK {
		t.Fatalf("start: %d %s", rec.Code, rec.Body)
	}
	if m := *mounted; len(m) != 1 || m[0] != (runtime.VolumeMount{Name: "ds", HostPath: "/volumes/ds", ContainerPath: "/data"}) {
		t.Errorf("the back end was given %+v", m)
	}
	if rec := start("i-2", `[{"name":"ds","owner":"tenant-7","mount_path":"/data"}]`); rec.Code != http.StatusConflict || errorBody(t, rec).Field != "volumes[0].name" {
		t.Errorf("a second rental of a held volume: %d %s, want 409", rec.Code, rec.Body)
	}
	rec := ts.do(t, http.MethodGet, "/volumes", "")
	if !strings.Contains(rec.Body.String(), `"attached_to":"i-1"`) {
		t.Errorf("list while attached: %s", rec.Body)
	}
	if rec := ts.do(t, http.MethodDelete, "/volumes/ds", ""); rec.Code != http.StatusConflict {
		t.Errorf("delete while attached: %d %s, want 409", rec.Code, rec.Body)
	}
}

func TestVolumeRoutesWithoutStore(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	for _, r := range []struct{ method, path, body string }{
		{http.MethodGet, "/volumes", ""},
		{http.MethodPost, "/volumes", `{"name":"a","owner":"o","size_gb":1}`},
		{http.MethodDelete, "/volumes/a", ""},
	} {
		if rec := ts.do(t, r.method, r.path, r.body); rec.Code != http.StatusNotImplemented {
			t.Errorf("%s %s: %d %s, want 501", r.method, r.path, rec.Code, rec.Body)
		}
	}
}

// TestVolumeDeleteWaitsForRestore: until the runtime has been read back, a
// volume may be held by a rental the agent does not know of yet, and is
// not deleted.
func TestVolumeDeleteWaitsForRestore(t *testing.T) {
	t.Parallel()
	store := &fakeVolumes{vols: map[string]volume.Volume{"ds": {Name: "ds", Owner: "o", SizeGB: 1}}}
	down := true
	var mu sync.Mutex
	be := &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return nil, fmt.Errorf("containerd: %w", errdefs.ErrUnavailable)
		}
		return nil, nil
	}}
	l := lifecycle.New(closable{be}, lifecycle.Options{Kinds: []runtime.Admission{lifecycle.VolumeReservations{Store: store}}, ReconcileInterval: -1})
	t.Cleanup(func() { l.Close() })
	ts := newTestServer(t, l, func(o *Options) { o.Volumes = store })
	if rec := ts.do(t, http.MethodDelete, "/volumes/ds", ""); rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("delete before the runtime was read back: %d %s, want 503", rec.Code, rec.Body)
	}
	if len(store.List(context.Background())) != 1 {
		t.Fatal("the volume was deleted")
	}
	mu.Lock()
	down = false
	mu.Unlock()
	if rec := ts.do(t, http.MethodDelete, "/volumes/ds", ""); rec.Code != http.StatusOK {
		t.Fatalf("delete once the runtime answers: %d %s", rec.Code, rec.Body)
	}
}
