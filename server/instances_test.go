package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
)

const startBody = `{"instance_id":"web-1","image":"nginx:1.27","env":{"FOO":"bar"},` +
	`"resources":{"cpus":2,"memory_mb":1024},"registry_auth":{"username":"bob","password":"hunter2-registry"},"labels":{"team":"ml"}}`

func TestStartInstanceWithGPUs(t *testing.T) {
	t.Parallel()
	var got runtime.InstanceSpec
	ts := newTestServer(t, &fakeRuntime{start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
		got = spec
		inst := running(spec)
		inst.GPUs = []runtime.GPU{{Index: 2, UUID: "GPU-b"}, {Index: 5, UUID: "GPU-e"}}
		return inst, nil
	}})
	rec := ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"g","image":"nginx","gpu_count":2}`)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if got.GPURequest.Count != 2 || got.GPURequest.IDs != nil {
		t.Fatalf("GPU request passed on as %+v", got.GPURequest)
	}
	var resp StartInstanceResponse
	decodeInto(t, rec, &resp)
	if want := []GPUResponse{{2, "GPU-b"}, {5, "GPU-e"}}; !reflect.DeepEqual(resp.GPUs, want) {
		t.Fatalf("response GPUs %+v, want %+v", resp.GPUs, want)
	}
	rec = ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"h","image":"nginx","gpus":["GPU-abc","3"]}`)
	if rec.Code != http.StatusOK || !reflect.DeepEqual(got.GPURequest.IDs, []string{"GPU-abc", "3"}) {
		t.Fatalf("explicit GPUs: %d, passed on as %+v", rec.Code, got.GPURequest)
	}
}

func TestStartInstance(t *testing.T) {
	t.Parallel()
	var got runtime.InstanceSpec
	ts := newTestServer(t, &fakeRuntime{start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
		got = spec
		return running(spec), nil
	}})
	rec := ts.do(t, http.MethodPost, "/start_instance", startBody)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var resp StartInstanceResponse
	decodeInto(t, rec, &resp)
	want := StartInstanceResponse{
		Message: "Instance started successfully", ContainerID: "web-1", InstanceID: "web-1",
		Status: "running", Image: "docker.io/library/nginx:1.27", CreatedAt: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC),
		GPUs: []GPUResponse{}, Ports: []PortResponse{},
	}
	if !reflect.DeepEqual(resp, want) {
		t.Errorf("response %+v, want %+v", resp, want)
	}
	wantSpec := runtime.InstanceSpec{
		ID: "web-1", Image: "docker.io/library/nginx:1.27", Env: map[string]string{"FOO": "bar"},
		Resources:    runtime.Resources{CPUs: 2, MemoryMB: 1024},
		Labels:       map[string]string{"team": "ml"},
		RegistryAuth: &runtime.RegistryAuth{Username: "bob", Password: "hunter2-registry"},
	}
	if !reflect.DeepEqual(got, wantSpec) {
		t.Errorf("runtime got %+v, want %+v", got, wantSpec)
	}
	if logs := ts.logs.String(); strings.Contains(logs, testToken) || strings.Contains(logs, "hunter2-registry") {
		t.Errorf("a secret reached the log:\n%s", logs)
	}
}

// TestStartInstanceIdempotent: the runtime decides idempotency by the spec's
// hash; the server must hand it equal specs for equal requests, whether or
// not empty fields are spelled out, and pass its answer through.
func TestStartInstanceIdempotent(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	started := map[string]runtime.Instance{}
	calls := 0
	ts := newTestServer(t, &fakeRuntime{start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if inst, ok := started[spec.ID]; ok {
			if inst.SpecHash != spec.Hash() {
				return runtime.Instance{}, fmt.Errorf("instance %s exists with another spec: %w", spec.ID, errdefs.ErrConflict)
			}
			return inst, nil
		}
		inst := running(spec)
		inst.ContainerID = fmt.Sprintf("ctr-%d", calls)
		started[spec.ID] = inst
		return inst, nil
	}})
	var ids []string
	for _, body := range []string{
		`{"instance_id":"a","image":"nginx"}`,
		`{"instance_id":"a","image":"nginx","env":{},"labels":{},"command":[],"resources":{},"registry_auth":{"username":"other"}}`,
	} {
		rec := ts.do(t, http.MethodPost, "/start_instance", body)
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: status %d: %s", body, rec.Code, rec.Body)
		}
		var resp StartInstanceResponse
		decodeInto(t, rec, &resp)
		ids = append(ids, resp.ContainerID)
	}
	if ids[0] != ids[1] {
		t.Errorf("repeated start answered containers %v", ids)
	}
	rec := ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"a","image":"redis"}`)
	if rec.Code != http.StatusConflict {
		t.Fatalf("different spec: status %d, want 409", rec.Code)
	}
	if body := errorBody(t, rec); !strings.Contains(body.Error, "another spec") {
		t.Errorf("conflict message %q does not explain", body.Error)
	}
}

func TestStartInstanceErrors(t *testing.T) {
	t.Parallel()
	stepErr := func(step string, err error) error { return &runtime.StepError{Step: step, Err: err} }
	tests := []struct {
		name   string
		err    error
		status int
		field  string
		step   string
	}{
		{name: "image does not exist", err: stepErr(runtime.StepPull, fmt.Errorf("pull docker.io/library/nope:latest: %w", errdefs.ErrNotFound)),
			status: http.StatusBadRequest, field: "image", step: "pull"},
		{name: "registry refuses credentials", err: stepErr(runtime.StepPull, fmt.Errorf("pull: 401 unauthorized: %w", errdefs.ErrUnauthenticated)),
			status: http.StatusBadRequest, field: "registry_auth", step: "pull"},
		{name: "registry denies access", err: stepErr(runtime.StepPull, fmt.Errorf("pull: 403 forbidden: %w", errdefs.ErrPermissionDenied)),
			status: http.StatusBadRequest, field: "registry_auth", step: "pull"},
		{name: "unknown GPU", err: stepErr(runtime.StepAllocate, fmt.Errorf("%w: unknown GPU \"GPU-x\"", errdefs.ErrInvalidArgument)),
			status: http.StatusBadRequest, field: "gpus", step: "allocate"},
		{name: "too few GPUs", err: stepErr(runtime.StepAllocate, errdefs.ErrConflict.WithMessage("requested 2 GPUs, 1 free")),
			status: http.StatusConflict, step: "allocate"},
		{name: "registry unreachable", err: stepErr(runtime.StepPull, errors.New("dial tcp: connection refused")),
			status: http.StatusBadGateway, step: "pull"},
		{name: "runtime down while pulling", err: stepErr(runtime.StepPull, fmt.Errorf("pull: %w", errdefs.ErrUnavailable)),
			status: http.StatusServiceUnavailable, step: "pull"},
		{name: "runtime down", err: stepErr(runtime.StepCreate, fmt.Errorf("create: %w", errdefs.ErrUnavailable)),
			status: http.StatusServiceUnavailable, step: "create"},
		{name: "spec conflict", err: fmt.Errorf("exists: %w", errdefs.ErrConflict), status: http.StatusConflict},
		{name: "already exists", err: stepErr(runtime.StepCreate, errdefs.ErrAlreadyExists), status: http.StatusConflict, step: "create"},
		{name: "failed precondition", err: errdefs.ErrFailedPrecondition, status: http.StatusConflict},
		{name: "no free GPUs", err: fmt.Errorf("gpus: %w", errdefs.ErrResourceExhausted), status: http.StatusConflict},
		{name: "rejected by runtime", err: stepErr(runtime.StepCreate, fmt.Errorf("bad mount: %w", errdefs.ErrInvalidArgument)),
			status: http.StatusBadRequest, step: "create"},
		{name: "task start fails", err: stepErr(runtime.StepStart, errors.New("runc: exec failed")),
			status: http.StatusInternalServerError, step: "start"},
		{name: "plain failure", err: errors.New("disk full"), status: http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, &fakeRuntime{start: func(context.Context, runtime.InstanceSpec) (runtime.Instance, error) {
				return runtime.Instance{}, tt.err
			}})
			rec := ts.do(t, http.MethodPost, "/start_instance", startBody)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			body := errorBody(t, rec)
			if body.Field != tt.field || body.Step != tt.step {
				t.Errorf("field %q step %q, want %q %q", body.Field, body.Step, tt.field, tt.step)
			}
			if tt.status >= 500 && tt.status != http.StatusBadGateway && strings.Contains(body.Error, tt.err.Error()) {
				t.Errorf("server error leaks its cause to the caller: %q", body.Error)
			}
			if tt.status >= 500 && !strings.Contains(ts.logs.String(), "disk full") && tt.name == "plain failure" {
				t.Errorf("cause not logged")
			}
		})
	}
}

func TestRequestErrors(t *testing.T) {
	t.Parallel()
	huge := `{"instance_id":"a","image":"nginx","env":{"X":"` + strings.Repeat("x", maxBodyBytes) + `"}}`
	tests := []struct {
		name, method, path, body string
		token                    []string
		status                   int
		field                    string
	}{
		{name: "bad JSON", method: "POST", path: "/start_instance", body: `{"instance_id":`, status: 400},
		{name: "unknown field", method: "POST", path: "/start_instance", body: obj(`"gpus":2`), status: 400, field: "gpus"},
		{name: "trailing garbage", method: "POST", path: "/start_instance", body: obj("") + "]", status: 400},
		{name: "invalid field", method: "POST", path: "/start_instance", body: obj(`"resources":{"cpus":-2}`), status: 400, field: "resources.cpus"},
		{name: "no body", method: "POST", path: "/start_instance", status: 400},
		{name: "body over 1 MiB", method: "POST", path: "/start_instance", body: huge, status: 413},
		{name: "terminate body over 1 MiB", method: "POST", path: "/terminate_instance", body: huge, status: 413},
		{name: "no token", method: "GET", path: "/instances", token: []string{""}, status: 401},
		{name: "wrong token", method: "GET", path: "/instances", token: []string{"wrong"}, status: 401},
		{name: "token prefix", method: "GET", path: "/instances", token: []string{testToken[:5]}, status: 401},
		{name: "no token on ws", method: "GET", path: "/ws", token: []string{""}, status: 401},
		{name: "no token, bad body", method: "POST", path: "/start_instance", body: "{", token: []string{""}, status: 401},
		{name: "no token, unknown path", method: "GET", path: "/nope", token: []string{""}, status: 401},
		{name: "no token, wrong method", method: "DELETE", path: "/healthz", token: []string{""}, status: 401},
		{name: "unknown path", method: "GET", path: "/nope", status: 404},
		{name: "unknown instance path", method: "GET", path: "/instances/a/b/c", status: 404},
		{name: "wrong method", method: "GET", path: "/start_instance", status: 405},
		{name: "wrong method on health", method: "POST", path: "/healthz", status: 405},
		{name: "bad id", method: "GET", path: "/instances/-x", status: 400, field: "id"},
		{name: "bad tail", method: "GET", path: "/instances/a/logs?tail=abc", status: 400, field: "tail"},
		{name: "zero tail", method: "GET", path: "/instances/a/logs?tail=0", status: 400, field: "tail"},
		{name: "huge tail", method: "GET", path: "/instances/a/logs?tail=10001", status: 400, field: "tail"},
		{name: "empty tail", method: "GET", path: "/instances/a/logs?tail=", status: 400, field: "tail"},
		{name: "bad since", method: "GET", path: "/ws?since=-1", status: 400, field: "since"},
		{name: "ws without upgrade", method: "GET", path: "/ws", status: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, &fakeRuntime{})
			rec := ts.do(t, tt.method, tt.path, tt.body, tt.token...)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			if body := errorBody(t, rec); body.Field != tt.field {
				t.Errorf("field %q, want %q (%s)", body.Field, tt.field, body.Error)
			}
			switch tt.status {
			case http.StatusUnauthorized:
				if rec.Header().Get("WWW-Authenticate") != "Bearer" {
					t.Errorf("401 without WWW-Authenticate: Bearer")
				}
			case http.StatusMethodNotAllowed:
				if allow := rec.Header().Get("Allow"); !strings.Contains(allow, "POST") && !strings.Contains(allow, "GET") {
					t.Errorf("405 with Allow %q", allow)
				}
			}
		})
	}
}

func TestAllowHeader(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	rec := ts.do(t, http.MethodGet, "/terminate_instance", "")
	if rec.Code != http.StatusMethodNotAllowed || !strings.Contains(rec.Header().Get("Allow"), "POST") {
		t.Errorf("status %d, Allow %q", rec.Code, rec.Header().Get("Allow"))
	}
}

func TestTerminateInstance(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body    string
		timeout time.Duration
	}{
		{body: `{"instance_id":"web-1"}`, timeout: 7 * time.Second},
		{body: `{"instance_id":"web-1","timeout_seconds":0}`, timeout: 0},
		{body: `{"instance_id":"web-1","timeout_seconds":30}`, timeout: 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			t.Parallel()
			var gotID string
			var gotTimeout time.Duration
			ts := newTestServer(t, &fakeRuntime{terminate: func(_ context.Context, id string, timeout time.Duration) error {
				gotID, gotTimeout = id, timeout
				return nil
			}}, func(o *Options) { o.DefaultStopTimeout = 7 * time.Second })
			rec := ts.do(t, http.MethodPost, "/terminate_instance", tt.body)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			var resp TerminateInstanceResponse
			decodeInto(t, rec, &resp)
			if resp != (TerminateInstanceResponse{Message: "Instance terminated successfully", InstanceID: "web-1"}) {
				t.Errorf("response %+v", resp)
			}
			if gotID != "web-1" || gotTimeout != tt.timeout {
				t.Errorf("runtime got %q %v, want web-1 %v", gotID, gotTimeout, tt.timeout)
			}
		})
	}
}

func TestTerminateUnknownInstance(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{terminate: func(_ context.Context, id string, _ time.Duration) error {
		return fmt.Errorf("instance %q: %w", id, errdefs.ErrNotFound)
	}})
	rec := ts.do(t, http.MethodPost, "/terminate_instance", `{"instance_id":"gone"}`)
	if rec.Code != http.StatusNotFound {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if body := errorBody(t, rec); !strings.Contains(body.Error, "gone") {
		t.Errorf("message %q does not name the instance", body.Error)
	}
}

func TestInstances(t *testing.T) {
	t.Parallel()
	exit := 137
	exited := runtime.Instance{
		ID: "b", ContainerID: "b", Image: "redis", Status: runtime.StatusExited, ExitCode: &exit, OOMKilled: true,
		CreatedAt:  time.Date(2025, 1, 1, 0, 0, 0, 0, time.FixedZone("X", 7200)),
		StartedAt:  time.Date(2025, 1, 1, 0, 0, 1, 0, time.UTC),
		FinishedAt: time.Date(2025, 1, 1, 0, 5, 0, 0, time.UTC),
	}
	created := runtime.Instance{ID: "a", ContainerID: "a", Image: "nginx", Status: runtime.StatusCreated}
	ts := newTestServer(t, &fakeRuntime{
		list: func(context.Context) ([]runtime.Instance, error) { return []runtime.Instance{exited, created}, nil },
		get: func(_ context.Context, id string) (runtime.Instance, error) {
			if id == "b" {
				return exited, nil
			}
			return runtime.Instance{}, fmt.Errorf("instance %q: %w", id, errdefs.ErrNotFound)
		},
		logs: func(_ context.Context, id string, tail int) ([]byte, error) {
			if id != "b" {
				return nil, errdefs.ErrNotFound
			}
			return []byte(fmt.Sprintf("tail=%d\n", tail)), nil
		},
	})

	rec := ts.do(t, http.MethodGet, "/instances", "")
	want := `{"instances":[` +
		`{"instance_id":"a","container_id":"a","image":"nginx","status":"created","exit_code":null,"oom_killed":false,"pid":0,"labels":{},"gpus":[],"ports":[]},` +
		`{"instance_id":"b","container_id":"b","image":"redis","status":"exited","exit_code":137,"oom_killed":true,"pid":0,` +
		`"created_at":"2024-12-31T22:00:00Z","started_at":"2025-01-01T00:00:01Z","finished_at":"2025-01-01T00:05:00Z","labels":{},"gpus":[],"ports":[]}]}`
	if rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != want {
		t.Errorf("GET /instances: %d\n%s\nwant\n%s", rec.Code, rec.Body, want)
	}

	rec = ts.do(t, http.MethodGet, "/instances/b", "")
	var inst InstanceResponse
	decodeInto(t, rec, &inst)
	if rec.Code != http.StatusOK || inst.InstanceID != "b" || inst.ExitCode == nil || *inst.ExitCode != 137 {
		t.Errorf("GET /instances/b: %d %s", rec.Code, rec.Body)
	}
	if rec := ts.do(t, http.MethodGet, "/instances/zzz", ""); rec.Code != http.StatusNotFound {
		t.Errorf("unknown instance: status %d", rec.Code)
	}

	for query, want := range map[string]string{"": "tail=100\n", "?tail=5": "tail=5\n", "?tail=10000": "tail=10000\n"} {
		rec := ts.do(t, http.MethodGet, "/instances/b/logs"+query, "")
		if rec.Code != http.StatusOK || rec.Body.String() != want || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
			t.Errorf("logs%s: %d %q %q", query, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
		}
	}
	if rec := ts.do(t, http.MethodGet, "/instances/zzz/logs", ""); rec.Code != http.StatusNotFound {
		t.Errorf("logs of unknown instance: status %d", rec.Code)
	}
}

func TestListRuntimeUnavailable(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) {
		return nil, fmt.Errorf("connection error: desc = dial unix /run/containerd.sock: %w", errdefs.ErrUnavailable)
	}})
	rec := ts.do(t, http.MethodGet, "/instances", "")
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d", rec.Code)
	}
	if body := errorBody(t, rec); strings.Contains(body.Error, "containerd.sock") {
		t.Errorf("503 leaks the cause: %q", body.Error)
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	var pingErr error
	var mu sync.Mutex
	ts := newTestServer(t, &fakeRuntime{ping: func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			return errors.New("readyz pinged without a timeout")
		}
		mu.Lock()
		defer mu.Unlock()
		return pingErr
	}})
	clock := &manualClock{now: time.Unix(1e9, 0)}
	ts.ready.now = clock.Now
	for _, path := range []string{"/healthz", "/readyz"} {
		rec := ts.do(t, http.MethodGet, path, "", "")
		var resp StatusResponse
		decodeInto(t, rec, &resp)
		if want := map[string]string{"/healthz": "ok", "/readyz": "ready"}[path]; rec.Code != http.StatusOK || resp.Status != want {
			t.Errorf("%s without a token: %d %s", path, rec.Code, rec.Body)
		}
	}

	mu.Lock()
	pingErr = errors.New("dial unix /run/containerd/containerd.sock: connect: no such file")
	mu.Unlock()
	clock.Advance(readinessTTL)
	rec := ts.do(t, http.MethodGet, "/readyz", "", "")
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("readyz with the runtime down: %d", rec.Code)
	}
	if body := errorBody(t, rec); body.Error != "containerd unavailable: dial unix /run/containerd/containerd.sock: connect: no such file" {
		t.Errorf("readyz error %q", body.Error)
	}
	if rec := ts.do(t, http.MethodGet, "/healthz", "", ""); rec.Code != http.StatusOK {
		t.Errorf("healthz depends on the runtime: %d", rec.Code)
	}
}

func TestOpenAPIServed(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	rec := ts.do(t, http.MethodGet, "/openapi.json", "")
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"openapi": "3.1.0"`) {
		t.Errorf("GET /openapi.json: %d", rec.Code)
	}
}

func TestPanicIsRecovered(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{}) // List is not faked: calling it panics
	rec := ts.do(t, http.MethodGet, "/instances", "")
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("status %d", rec.Code)
	}
	errorBody(t, rec)
	if !strings.Contains(ts.logs.String(), "panic") {
		t.Errorf("panic not logged")
	}
}

func TestNewRequiresDependencies(t *testing.T) {
	t.Parallel()
	ok := Options{Runtime: &fakeRuntime{}, Hub: newTestServer(t, &fakeRuntime{}).hub, Token: "t"}
	for name, mutate := range map[string]func(*Options){
		"runtime": func(o *Options) { o.Runtime = nil },
		"hub":     func(o *Options) { o.Hub = nil },
		"token":   func(o *Options) { o.Token = "" },
	} {
		o := ok
		mutate(&o)
		if _, err := New(o); err == nil {
			t.Errorf("New without %s: no error", name)
		}
	}
	if _, err := New(ok); err != nil {
		t.Errorf("New: %v", err)
	}
}

// Defect 8: an answer cut to the byte cap says so.
func TestLogsTruncatedHeader(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("x"), runtime.MaxLogBytes+1)
	ts := newTestServer(t, &fakeRuntime{logs: func(_ context.Context, id string, _ int) ([]byte, error) {
		if id == "big" {
			return big, nil
		}
		return []byte("small\n"), nil
	}})
	if rec := ts.do(t, http.MethodGet, "/instances/big/logs", ""); rec.Code != http.StatusOK || rec.Header().Get("X-Log-Truncated") != "true" {
		t.Errorf("cut logs: %d, X-Log-Truncated %q", rec.Code, rec.Header().Get("X-Log-Truncated"))
	}
	if rec := ts.do(t, http.MethodGet, "/instances/small/logs", ""); rec.Code != http.StatusOK || rec.Header().Get("X-Log-Truncated") != "" {
		t.Errorf("whole logs: %d, X-Log-Truncated %q", rec.Code, rec.Header().Get("X-Log-Truncated"))
	}
}
