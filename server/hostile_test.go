package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/gpualloc"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// memBackend is a thin back end kept in memory under a real Lifecycle: it
// records every container it creates, so that a test can show a refused
// request created nothing.
type memBackend struct {
	runtime.Runtime // unimplemented methods panic

	mu         sync.Mutex
	containers map[string]runtime.Instance
	creates    int
}

func newMemBackend() *memBackend { return &memBackend{containers: map[string]runtime.Instance{}} }

func (b *memBackend) Start(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if have, ok := b.containers[spec.ID]; ok {
		if have.SpecHash == spec.Hash() {
			return have, nil
		}
		return runtime.Instance{}, errdefs.ErrConflict.WithMessage("instance " + spec.ID + " runs another spec")
	}
	b.creates++
	inst := running(spec)
	b.containers[spec.ID] = inst
	return inst, nil
}

func (b *memBackend) Terminate(_ context.Context, id string, _ time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.containers[id]; !ok {
		return errdefs.ErrNotFound.WithMessage("instance " + id)
	}
	delete(b.containers, id)
	return nil
}

func (b *memBackend) Get(_ context.Context, id string) (runtime.Instance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	inst, ok := b.containers[id]
	if !ok {
		return runtime.Instance{}, errdefs.ErrNotFound.WithMessage("instance " + id)
	}
	return inst, nil
}

func (b *memBackend) List(context.Context) ([]runtime.Instance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []runtime.Instance
	for _, inst := range b.containers {
		out = append(out, inst)
	}
	return out, nil
}

func (b *memBackend) Logs(_ context.Context, id string, _ int) ([]byte, bool, error) {
	if _, err := b.Get(context.Background(), id); err != nil {
		return nil, false, err
	}
	return []byte("hello\n"), false, nil
}

func (b *memBackend) Ping(context.Context) error { return nil }

func (b *memBackend) Close() error { return nil }

func (b *memBackend) ids() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	for id := range b.containers {
		ids = append(ids, id)
	}
	return ids
}

// deepJSON nests an array n deep in the field named.
func deepJSON(field string, n int) string {
	return `{"instance_id":"deep","image":"nginx","` + field + `":` +
		strings.Repeat("[", n) + strings.Repeat("]", n) + `}`
}

// Hostile requests, through the real handler above a real Lifecycle with
// GPU reservations: each is answered 4xx with a JSON body naming the field
// at fault (where one is), and nothing is created or reserved.
func TestHostileRequestsAreRefusedAndCreateNothing(t *testing.T) {
	t.Parallel()
	inv, err := gpu.Open(dgxa100.New(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	alloc := gpualloc.New(gpu.NewAllocator(inv))
	be := newMemBackend()
	lc := lifecycle.New(be, lifecycle.Options{
		Kinds:             []runtime.Admission{lifecycle.GPUReservations{Alloc: alloc}},
		ReconcileInterval: -1,
	})
	t.Cleanup(func() { _ = lc.Close() })
	ts := newTestServer(t, lc)

	// Another tenant holds GPU 0.
	other := inv.GPUs()[0].UUID
	rec := ts.do(t, http.MethodPost, "/start_instance",
		`{"instance_id":"other-tenant","image":"nginx","gpus":["`+other+`"]}`)
	if rec.Code != http.StatusOK {
		t.Fatalf("setting up the other tenant: %d %s", rec.Code, rec.Body)
	}
	heldBefore := alloc.Holders()

	mb := strings.Repeat("x", 1<<20)
	halfMB := strings.Repeat("y", 512<<10)
	for _, tc := range []struct {
		name   string
		method string
		path   string
		body   string
		status int
		field  string // "" when the request has no field at fault (413, 404)
	}{
		{"traversal in instance_id", "POST", "/start_instance", `{"instance_id":"../../etc/passwd","image":"nginx"}`, 400, "instance_id"},
		{"slash in instance_id", "POST", "/start_instance", `{"instance_id":"a/b","image":"nginx"}`, 400, "instance_id"},
		{"dot-dot instance_id", "POST", "/start_instance", `{"instance_id":"..","image":"nginx"}`, 400, "instance_id"},
		{"NUL in instance_id", "POST", "/start_instance", `{"instance_id":"a\u0000b","image":"nginx"}`, 400, "instance_id"},
		{"newline in instance_id", "POST", "/start_instance", `{"instance_id":"a\nb","image":"nginx"}`, 400, "instance_id"},
		{"megabyte instance_id", "POST", "/start_instance", `{"instance_id":"` + halfMB + `","image":"nginx"}`, 400, "instance_id"},
		{"traversal in terminate", "POST", "/terminate_instance", `{"instance_id":"../x"}`, 400, "instance_id"},
		{"NUL in terminate", "POST", "/terminate_instance", `{"instance_id":"x\u0000"}`, 400, "instance_id"},
		{"env key with =", "POST", "/start_instance", `{"instance_id":"e","image":"nginx","env":{"A=B":"1"}}`, 400, "env"},
		{"env key with NUL", "POST", "/start_instance", `{"instance_id":"e","image":"nginx","env":{"A\u0000":"1"}}`, 400, "env"},
		{"env value with NUL", "POST", "/start_instance", `{"instance_id":"e","image":"nginx","env":{"A":"1\u0000"}}`, 400, "env"},
		{"empty env key", "POST", "/start_instance", `{"instance_id":"e","image":"nginx","env":{"":"1"}}`, 400, "env"},
		{"megabyte body", "POST", "/start_instance", `{"instance_id":"m","image":"nginx","env":{"A":"` + mb + `"}}`, 413, ""},
		{"half-megabyte env value", "POST", "/start_instance", `{"instance_id":"m","image":"nginx","env":{"A":"` + halfMB + `"}}`, 400, "env"},
		{"half-megabyte image", "POST", "/start_instance", `{"instance_id":"m","image":"` + halfMB + `"}`, 400, "image"},
		{"half-megabyte command", "POST", "/start_instance", `{"instance_id":"m","image":"nginx","command":["` + halfMB + `"]}`, 400, "command"},
		{"half-megabyte label", "POST", "/start_instance", `{"instance_id":"m","image":"nginx","labels":{"k":"` + halfMB + `"}}`, 400, "labels"},
		{"deeply nested JSON", "POST", "/start_instance", deepJSON("command", 100000), 400, "command"},
		{"deeply nested unknown field", "POST", "/start_instance", deepJSON("nested", 100000), 400, "nested"},
		{"unknown field", "POST", "/start_instance", `{"instance_id":"u","image":"nginx","privileged":true}`, 400, "privileged"},
		{"unknown nested field", "POST", "/start_instance", `{"instance_id":"u","image":"nginx","resources":{"devices":["/dev/sda"]}}`, 400, "resources.devices"},
		{"field in other case", "POST", "/start_instance", `{"instance_id":"u","Image":"nginx"}`, 400, "Image"},
		{"negative cpus", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","resources":{"cpus":-1}}`, 400, "resources.cpus"},
		{"huge cpus", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","resources":{"cpus":1e300}}`, 400, "resources.cpus"},
		{"overflowing cpus", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","resources":{"cpus":1e999}}`, 400, "resources.cpus"},
		{"negative memory", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","resources":{"memory_mb":-5}}`, 400, "resources.memory_mb"},
		{"huge memory", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","resources":{"memory_mb":9223372036854775807}}`, 400, "resources.memory_mb"},
		{"overflowing memory", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","resources":{"memory_mb":99999999999999999999}}`, 400, "resources.memory_mb"},
		{"negative pids", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","resources":{"pids":-1}}`, 400, "resources.pids"},
		{"huge pids", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","resources":{"pids":9223372036854775807}}`, 400, "resources.pids"},
		{"negative shm", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","resources":{"shm_mb":-1}}`, 400, "resources.shm_mb"},
		{"huge shm", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","resources":{"shm_mb":9223372036854775807}}`, 400, "resources.shm_mb"},
		{"negative gpu_count", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","gpu_count":-1}`, 400, "gpu_count"},
		{"huge gpu_count", "POST", "/start_instance", `{"instance_id":"l","image":"nginx","gpu_count":1000000}`, 400, "gpu_count"},
		{"negative stop timeout", "POST", "/terminate_instance", `{"instance_id":"other-tenant","timeout_seconds":-1}`, 400, "timeout_seconds"},
		{"huge stop timeout", "POST", "/terminate_instance", `{"instance_id":"other-tenant","timeout_seconds":9223372036854775807}`, 400, "timeout_seconds"},
		{"file image", "POST", "/start_instance", `{"instance_id":"i","image":"file:///etc/passwd"}`, 400, "image"},
		{"http image", "POST", "/start_instance", `{"instance_id":"i","image":"http://evil.example/x"}`, 400, "image"},
		{"docker scheme image", "POST", "/start_instance", `{"instance_id":"i","image":"docker://nginx"}`, 400, "image"},
		{"oci-archive image", "POST", "/start_instance", `{"instance_id":"i","image":"oci-archive:/tmp/x.tar"}`, 400, "image"},
		{"absolute path image", "POST", "/start_instance", `{"instance_id":"i","image":"/var/lib/x"}`, 400, "image"},
		{"traversal image", "POST", "/start_instance", `{"instance_id":"i","image":"../../x"}`, 400, "image"},
		{"image with NUL", "POST", "/start_instance", `{"instance_id":"i","image":"nginx\u0000"}`, 400, "image"},
		{"image with bad digest", "POST", "/start_instance", `{"instance_id":"i","image":"nginx@sha256:zz"}`, 400, "image"},
		{"another tenant's GPU", "POST", "/start_instance", `{"instance_id":"thief","image":"nginx","gpus":["` + other + `"]}`, 409, "gpus"},
		{"unknown GPU", "POST", "/start_instance", `{"instance_id":"thief","image":"nginx","gpus":["GPU-00000000-0000-0000-0000-000000000000"]}`, 400, "gpus"},
		{"GPU named twice", "POST", "/start_instance", `{"instance_id":"thief","image":"nginx","gpus":["1","1"]}`, 400, "gpus"},
		{"gpus and gpu_count", "POST", "/start_instance", `{"instance_id":"thief","image":"nginx","gpus":["1"],"gpu_count":1}`, 400, "gpus"},
		{"duplicate ports", "POST", "/start_instance", `{"instance_id":"p","image":"nginx","ports":[{"container_port":22},{"container_port":22}]}`, 400, "ports"},
		{"port zero", "POST", "/start_instance", `{"instance_id":"p","image":"nginx","ports":[{"container_port":0}]}`, 400, "ports"},
		{"port too high", "POST", "/start_instance", `{"instance_id":"p","image":"nginx","ports":[{"container_port":65536}]}`, 400, "ports"},
		{"negative port", "POST", "/start_instance", `{"instance_id":"p","image":"nginx","ports":[{"container_port":-22}]}`, 400, "ports"},
		{"odd protocol", "POST", "/start_instance", `{"instance_id":"p","image":"nginx","ports":[{"container_port":22,"protocol":"sctp"}]}`, 400, "ports"},
		{"huge tail", "GET", "/instances/other-tenant/logs?tail=99999999999999999999", "", 400, "tail"},
		{"negative tail", "GET", "/instances/other-tenant/logs?tail=-1", "", 400, "tail"},
		{"tail not a number", "GET", "/instances/other-tenant/logs?tail=1e3", "", 400, "tail"},
		{"traversal in path", "GET", "/instances/" + url.PathEscape("../x") + "/logs", "", 400, "id"},
		{"NUL in path", "GET", "/instances/" + url.PathEscape("x\x00"), "", 400, "id"},
		{"not an object", "POST", "/start_instance", `["instance_id"]`, 400, ""},
		{"trailing data", "POST", "/start_instance", `{"instance_id":"t","image":"nginx"}{"instance_id":"t2","image":"nginx"}`, 400, ""},
		{"duplicate key", "POST", "/start_instance", `{"instance_id":"t","image":"nginx","instance_id":"u"}`, 400, "instance_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := ts.do(t, tc.method, tc.path, tc.body)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %.300s", rec.Code, tc.status, rec.Body)
			}
			body := errorBody(t, rec)
			if tc.field != "" && !strings.HasPrefix(body.Field, tc.field) {
				t.Errorf("field %q, want %q: %.300s", body.Field, tc.field, rec.Body)
			}
		})
	}

	if ids := be.ids(); len(ids) != 1 || ids[0] != "other-tenant" || be.creates != 1 {
		t.Errorf("containers after hostile requests: %v (%d created), want only other-tenant", ids, be.creates)
	}
	if held := alloc.Holders(); len(held) != len(heldBefore) || len(held["other-tenant"]) != 1 || held["other-tenant"][0].UUID != other {
		t.Errorf("GPU holders after hostile requests: %v, want only other-tenant on %s", held, other)
	}
}
