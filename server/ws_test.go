package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/host-agent/host-agent/runtime/events"
)

// wsServer serves ts over a real loopback listener.
func wsServer(t *testing.T, ts *testServer) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(ts.Handler())
	t.Cleanup(srv.Close)
	return srv
}

func dialWS(t *testing.T, srv *httptest.Server, query, token string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	conn, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws"+query, h)
	if conn != nil {
		t.Cleanup(func() { conn.Close() })
	}
	return conn, resp, err
}

func mustDialWS(t *testing.T, srv *httptest.Server, query string) *websocket.Conn {
	t.Helper()
	conn, _, err := dialWS(t, srv, query, testToken)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return conn
}

func readEvent(t *testing.T, conn *websocket.Conn) events.Event {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var e events.Event
	if err := conn.ReadJSON(&e); err != nil {
		t.Fatalf("reading event: %v", err)
	}
	return e
}

// waitSubscribed publishes probe events until one reaches conn, so that a
// test knows the stream's subscription is live. It returns the probe's seq.
func waitSubscribed(t *testing.T, hub *events.Hub, conn *websocket.Conn) uint64 {
	t.Helper()
	hub.Publish(events.Event{Type: events.TypeRuntimeConnected, Message: "probe"})
	return readEvent(t, conn).Seq
}

func TestWebSocketAuth(t *testing.T) {
	t.Parallel()
	srv := wsServer(t, newTestServer(t, &fakeRuntime{}))
	for _, token := range []string{"", "wrong"} {
		_, resp, err := dialWS(t, srv, "", token)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("token %q: err %v, response %v", token, err, resp)
		}
	}
	_, resp, err := dialWS(t, srv, "?since=abc", testToken)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad since: err %v, response %v", err, resp)
	}
}

func TestWebSocketLiveEvents(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	conn := mustDialWS(t, wsServer(t, ts), "")
	probe := waitSubscribed(t, ts.hub, conn)

	code := 3
	ts.hub.Publish(events.Event{Type: events.TypeInstanceRunning, InstanceID: "a", Status: "running"})
	ts.hub.Publish(events.Event{Type: events.TypeInstanceExited, InstanceID: "a", Status: "exited", ExitCode: &code})
	first, second := readEvent(t, conn), readEvent(t, conn)
	if first.Seq != probe+1 || first.Type != events.TypeInstanceRunning || first.InstanceID != "a" {
		t.Errorf("first event %+v", first)
	}
	if second.Seq != probe+2 || second.ExitCode == nil || *second.ExitCode != 3 || second.Time.IsZero() {
		t.Errorf("second event %+v", second)
	}
}

func TestWebSocketResume(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	for i := 0; i < 3; i++ {
		ts.hub.Publish(events.Event{Type: events.TypeInstanceRunning, InstanceID: fmt.Sprint(i)})
	}
	// Learn the seqs from a full replay.
	_, all, _ := ts.hub.Subscribe(0, true)

	conn := mustDialWS(t, wsServer(t, ts), fmt.Sprintf("?since=%d", all[0].Seq))
	for _, want := range all[1:] {
		if got := readEvent(t, conn); got.Seq != want.Seq || got.InstanceID != want.InstanceID {
			t.Fatalf("backlog event %+v, want %+v", got, want)
		}
	}
	// Live events follow the backlog without a gap.
	ts.hub.Publish(events.Event{Type: events.TypeInstanceExited})
	if got := readEvent(t, conn); got.Seq != all[2].Seq+1 || got.Type != events.TypeInstanceExited {
		t.Errorf("live event after backlog %+v", got)
	}
}

func TestWebSocketLostNotice(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{}, func(o *Options) { o.Hub = events.NewHub(2, nil) })
	hub := ts.hub
	for i := 0; i < 5; i++ {
		hub.Publish(events.Event{Type: events.TypeInstanceRunning, InstanceID: fmt.Sprint(i)})
	}
	_, buffered, _ := hub.Subscribe(0, true)

	conn := mustDialWS(t, wsServer(t, ts), fmt.Sprintf("?since=%d", buffered[0].Seq-3))
	lost := readEvent(t, conn)
	if lost.Type != events.TypeEventsLost || !strings.Contains(lost.Message, fmt.Sprint(buffered[0].Seq)) {
		t.Fatalf("first message %+v, want an events.lost notice naming seq %d", lost, buffered[0].Seq)
	}
	for _, want := range buffered {
		if got := readEvent(t, conn); got.Seq != want.Seq {
			t.Errorf("after the notice got seq %d, want %d", got.Seq, want.Seq)
		}
	}
}

// TestWebSocketPingKeepsAlive: a client that answers pings (gorilla does
// while reading) stays connected far beyond the pong wait; one that does
// not is disconnected. The pong wait is many ping intervals, so that a
// loaded machine answering one ping late does not fail the test.
func TestWebSocketPingKeepsAlive(t *testing.T) {
	t.Parallel()
	const ping, pongWait = 200 * time.Millisecond, 2 * time.Second
	ts := newTestServer(t, &fakeRuntime{}, func(o *Options) { o.PingInterval, o.PongWait = ping, pongWait })
	srv := wsServer(t, ts)

	// The answering client reads all along, as gorilla must to answer
	// pings.
	alive := mustDialWS(t, srv, "")
	pings := make(chan struct{}, 100)
	alive.SetPingHandler(func(data string) error {
		select {
		case pings <- struct{}{}:
		default:
		}
		return alive.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	received := make(chan events.Event, 1)
	readErr := make(chan error, 1)
	go func() {
		for {
			var e events.Event
			if err := alive.ReadJSON(&e); err != nil {
				readErr <- err
				return
			}
			received <- e
		}
	}()

	silent := mustDialWS(t, srv, "")
	silent.SetPingHandler(func(string) error { return nil })
	_ = silent.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		if _, _, err := silent.NextReader(); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("server never dropped a client that does not answer pings")
			}
			break
		}
	}

	// Well past its first read deadline (the pong wait), the answering
	// client still gets events.
	for i := 0; i < int(2*pongWait/ping)+5; i++ {
		select {
		case <-pings:
		case err := <-readErr:
			t.Fatalf("answering client disconnected: %v", err)
		}
	}
	ts.hub.Publish(events.Event{Type: events.TypeRuntimeConnected, Message: "still here"})
	select {
	case e := <-received:
		if e.Message != "still here" {
			t.Errorf("event %+v", e)
		}
	case err := <-readErr:
		t.Fatalf("answering client disconnected: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
	}
}

func TestWebSocketSlowConsumer(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	conn := mustDialWS(t, wsServer(t, ts), "")
	waitSubscribed(t, ts.hub, conn)

	// The client stops reading. Large events fill the socket buffers, the
	// stream's write blocks and its queue overflows: far more is published
	// than the buffers and the queue can hold.
	big := strings.Repeat("x", 64<<10)
	for i := 0; i < 4*events.SubscriberBuffer; i++ {
		ts.hub.Publish(events.Event{Type: events.TypeInstancePullProgress, Message: big})
	}

	var last uint64
	for {
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		var e events.Event
		err := conn.ReadJSON(&e)
		if err == nil {
			last = e.Seq
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("stream ended with %v, want a close frame", err)
		}
		if want := fmt.Sprintf("slow consumer; resume with ?since=%d", last); ce.Code != websocket.CloseTryAgainLater || ce.Text != want {
			t.Errorf("close %d %q, want %d %q", ce.Code, ce.Text, websocket.CloseTryAgainLater, want)
		}
		break
	}

	// Resuming where the close said misses nothing.
	conn2 := mustDialWS(t, wsServer(t, ts), fmt.Sprintf("?since=%d", last))
	if e := readEvent(t, conn2); e.Seq != last+1 || e.Type == events.TypeEventsLost {
		t.Errorf("resumed with %+v, want seq %d", e, last+1)
	}
}

func TestWebSocketShutdown(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	srv := wsServer(t, ts)
	conn := mustDialWS(t, srv, "")
	waitSubscribed(t, ts.hub, conn)

	// Read concurrently: Shutdown waits for the close handshake.
	closed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := conn.NextReader(); err != nil {
				closed <- err
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	var ce *websocket.CloseError
	if err := <-closed; !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Errorf("client saw %v, want close 1001", err)
	}

	// A stream opened after Shutdown is closed at once.
	late := mustDialWS(t, srv, "")
	_ = late.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := late.NextReader(); !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Errorf("late client saw %v, want close 1001", err)
	}
}

func TestServe(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ts.Serve(ctx, ln) }()

	base := "http://" + ln.Addr().String()
	resp, err := http.Get(base + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	h := http.Header{"Authorization": {"Bearer " + testToken}}
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/ws", h)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitSubscribed(t, ts.hub, conn)

	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ce *websocket.CloseError
	if _, _, err := conn.NextReader(); !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Errorf("stream after Serve returned: %v, want close 1001", err)
	}
}
