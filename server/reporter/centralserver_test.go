package reporter

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

// call is one request the fake central server received.
type call struct {
	Kind   string // "register" or "heartbeat"
	Path   string
	Header http.Header
	Body   []byte
	// OK is whether the server accepted it.
	OK bool
}

func (c call) register(t *testing.T) RegisterRequest {
	t.Helper()
	var r RegisterRequest
	if c.Kind != "register" {
		t.Fatalf("call is a %s, not a register", c.Kind)
	}
	if err := json.Unmarshal(c.Body, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func (c call) heartbeat(t *testing.T) HeartbeatRequest {
	t.Helper()
	var h HeartbeatRequest
	if c.Kind != "heartbeat" {
		t.Fatalf("call is a %s, not a heartbeat", c.Kind)
	}
	if err := json.Unmarshal(c.Body, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// answer is what the fake server does with one call: a status and body, or
// drop the connection, or stall until the client gives up.
type answer struct {
	status int
	body   string
	drop   bool
	stall  bool
}

var answerOK = answer{status: http.StatusOK}

// fakeServer is the central server: it records every call and answers as
// respond says (n counts calls from 0, kind is register or heartbeat).
type fakeServer struct {
	*httptest.Server
	mu      sync.Mutex
	calls   []call
	respond func(n int, kind string) answer
}

func newFakeServer(t *testing.T, respond func(n int, kind string) answer) *fakeServer {
	t.Helper()
	if respond == nil {
		respond = func(int, string) answer { return answerOK }
	}
	f := &fakeServer{respond: respond}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	kind := "unknown"
	switch r.URL.EscapedPath() {
	case "/api/v1/agents/" + testAgentID + "/register":
		kind = "register"
	case "/api/v1/agents/" + testAgentID + "/heartbeat":
		kind = "heartbeat"
	}
	if r.Method != http.MethodPost {
		kind = "bad method " + r.Method
	}
	// Recorded before answering, so that the client sees it once it has
	// the answer.
	f.mu.Lock()
	n := len(f.calls)
	a := f.respond(n, kind)
	f.calls = append(f.calls, call{Kind: kind, Path: r.URL.EscapedPath(), Header: r.Header.Clone(), Body: body,
		OK: !a.drop && !a.stall && a.status >= 200 && a.status < 300})
	f.mu.Unlock()
	switch {
	case a.drop:
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	case a.stall:
		<-r.Context().Done()
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}
}

func (f *fakeServer) recorded() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeServer) ofKind(kind string) []call {
	var out []call
	for _, c := range f.recorded() {
		if c.Kind == kind {
			out = append(out, c)
		}
	}
	return out
}

// harness wires a Reporter to the fakes. Waits go through sleep, which
// records them instead of spending them and stops the run when until says.
type harness struct {
	t      *testing.T
	server *fakeServer
	rt     *fakeRuntime
	gpus   *fakeGPUs
	pub    *publisher
	logs   *syncBuffer
	// dataDir does not exist; its grandparent does.
	dataDir string

	mu     sync.Mutex
	sleeps []time.Duration
}

func newHarness(t *testing.T, respond func(n int, kind string) answer, instances ...runtime.Instance) *harness {
	return &harness{
		t:       t,
		server:  newFakeServer(t, respond),
		rt:      newFakeRuntime(instances...),
		gpus:    newFakeGPUs(2),
		pub:     &publisher{},
		logs:    &syncBuffer{},
		dataDir: filepath.Join(t.TempDir(), "not/yet/containerd"),
	}
}

// options are the Reporter's options against the fakes, for a test to
// adjust.
func (h *harness) options() Options {
	return Options{
		ServerURL:        h.server.URL,
		AgentID:          testAgentID,
		Token:            testToken,
		Version:          testVersion,
		PublicURL:        "https://host-1.example.net:8080",
		Interval:         15 * time.Second,
		RequestTimeout:   2 * time.Second,
		TerminateTimeout: time.Second,
		Runtime:          h.rt,
		GPUs:             h.gpus,
		CDI:              func() bool { return true },
		DataDir:          h.dataDir,
		Events:           h.pub,
		Logger:           slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		HTTPClient:       h.server.Client(),
	}
}

// run runs a Reporter built from opts until until(round) is true after a
// round (round counts from 1), and returns the waits it asked for.
func (h *harness) run(opts Options, until func(round int) bool) []time.Duration {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var waits []time.Duration
	opts.Sleep = func(ctx context.Context, d time.Duration) error {
		waits = append(waits, d)
		h.mu.Lock()
		h.sleeps = append(h.sleeps, d)
		h.mu.Unlock()
		if until(len(waits)) {
			cancel()
		} else if len(waits) > 500 {
			h.t.Errorf("still running after %d rounds", len(waits))
			cancel()
		}
		return ctx.Err()
	}
	r, err := New(opts)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := r.Run(ctx); err != nil {
		h.t.Fatalf("Run: %v", err)
	}
	if ctx.Err() == context.DeadlineExceeded {
		h.t.Fatal("Run did not finish in time")
	}
	return waits
}

// heartbeatsAtLeast stops a run once the server has accepted n heartbeats.
func (h *harness) heartbeatsAtLeast(n int) func(int) bool {
	return func(int) bool {
		accepted := 0
		for _, c := range h.server.ofKind("heartbeat") {
			if c.OK {
				accepted++
			}
		}
		return accepted >= n
	}
}
