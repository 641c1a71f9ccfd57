package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

const testToken = "test-token-0123456789"

// fakeRuntime embeds the interface and overrides only the methods whose
// function a test sets; calling any other panics, which the server turns
// into a 500 the test notices.
type fakeRuntime struct {
	runtime.Runtime
	start     func(context.Context, runtime.InstanceSpec) (runtime.Instance, error)
	terminate func(context.Context, string, time.Duration) error
	get       func(context.Context, string) (runtime.Instance, error)
	list      func(context.Context) ([]runtime.Instance, error)
	logs      func(context.Context, string, int) ([]byte, error)
	ping      func(context.Context) error
}

func (f *fakeRuntime) Start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	return f.start(ctx, spec)
}

func (f *fakeRuntime) Terminate(ctx context.Context, id string, timeout time.Duration) error {
	return f.terminate(ctx, id, timeout)
}

func (f *fakeRuntime) Get(ctx context.Context, id string) (runtime.Instance, error) {
	return f.get(ctx, id)
}

func (f *fakeRuntime) List(ctx context.Context) ([]runtime.Instance, error) { return f.list(ctx) }

func (f *fakeRuntime) Logs(ctx context.Context, id string, tail int) ([]byte, bool, error) {
	b, err := f.logs(ctx, id, tail)
	return b, len(b) > runtime.MaxLogBytes, err
}

func (f *fakeRuntime) Ping(ctx context.Context) error { return f.ping(ctx) }

func (f *fakeRuntime) Close() error { return nil }

// syncBuffer collects log output from handlers running on other goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testServer struct {
	*Server
	hub  *events.Hub
	logs *syncBuffer
}

// newTestServer builds a Server around rt; opt may adjust the Options.
func newTestServer(t *testing.T, rt runtime.Runtime, opt ...func(*Options)) *testServer {
	t.Helper()
	logs := &syncBuffer{}
	hub := events.NewHub(0, nil)
	opts := Options{
		Runtime: rt,
		Hub:     hub,
		Token:   testToken,
		AgentID: "agent-1",
		// Not t.Output: a stream's request line is logged as its handler
		// returns, which may be after the test.
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opt {
		o(&opts)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v (a stream goroutine did not end)", err)
		}
	})
	return &testServer{Server: s, hub: opts.Hub, logs: logs}
}

// do sends one request through the handler, with the test token unless
// token says otherwise ("" sends none).
func (ts *testServer) do(t *testing.T, method, path, body string, token ...string) *httptest.ResponseRecorder {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, r)
	tok := testToken
	if len(token) > 0 {
		tok = token[0]
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	ts.Handler().ServeHTTP(rec, req)
	return rec
}

// errorBody decodes an error response, failing unless it has exactly the
// error shape.
func errorBody(t *testing.T, rec *httptest.ResponseRecorder) errorResponse {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("error Content-Type %q, want application/json", ct)
	}
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	var body errorResponse
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("error body is not the error shape: %v", err)
	}
	if body.Error == "" {
		t.Errorf("error body has no message")
	}
	return body
}

func decodeInto(t *testing.T, rec *httptest.ResponseRecorder, v any) {
	t.Helper()
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("decoding %q: %v", rec.Body.String(), err)
	}
}

// running is what the fake runtime answers for a started spec.
func running(spec runtime.InstanceSpec) runtime.Instance {
	return runtime.Instance{
		ID:          spec.ID,
		ContainerID: spec.ID,
		Image:       spec.Image,
		Status:      runtime.StatusRunning,
		Pid:         4242,
		CreatedAt:   time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC),
		StartedAt:   time.Date(2025, 6, 1, 12, 0, 1, 0, time.UTC),
		SpecHash:    spec.Hash(),
		Labels:      spec.Labels,
	}
}
