package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/gorilla/websocket"
	"github.com/labstack/echo/v5"

	"github.com/host-agent/host-agent/runtime/events"
)

const (
	// wsWriteTimeout bounds every write to a WebSocket client, so that a
	// client that stopped reading cannot hold its stream's goroutine.
	wsWriteTimeout = 10 * time.Second
	// wsCloseGrace is how long a close frame waits for the client's reply
	// before the connection is cut.
	wsCloseGrace = time.Second
	// wsReadLimit bounds what a client may send; the stream ignores it
	// anyway.
	wsReadLimit = 4096
)

// streamEvents serves GET /ws: the Hub's events, one JSON text message each,
// resuming after ?since=<seq> when given. It sends an events.lost notice
// first when the resume point is no longer buffered, then the missed
// events, then live ones.
func (s *Server) streamEvents(c *echo.Context) error {
	since, hasSince, err := resumePoint(c.QueryParams())
	if err != nil {
		return err
	}

	handshakeStatus := 0
	up := websocket.Upgrader{
		HandshakeTimeout: wsWriteTimeout,
		// The bearer token in a header is the only credential, and a
		// browser cannot attach one to a cross-site WebSocket, so checking
		// Origin would protect nothing and could turn away a proxy.
		CheckOrigin: func(*http.Request) bool { return true },
		// The failure is returned below and written by the error handler,
		// in the API's error shape.
		Error: func(_ http.ResponseWriter, _ *http.Request, status int, _ error) { handshakeStatus = status },
	}
	// Subscribing before the handshake completes means a client misses
	// nothing published after it has its 101.
	sub, backlog, lost := s.hub.Subscribe(since, hasSince)
	defer sub.Close()
	conn, err := up.Upgrade(c.Response(), c.Request(), nil)
	resp, _ := echo.UnwrapResponse(c.Response())
	if err != nil {
		if handshakeStatus != 0 {
			return &statusError{status: handshakeStatus, msg: "websocket handshake failed: " + err.Error()}
		}
		// The connection was hijacked and is gone: nothing can be sent.
		if resp != nil {
			resp.Committed = true
		}
		s.log.Debug("websocket handshake failed after hijack", "error", err)
		return nil
	}
	if resp != nil {
		// For the request log, and so that nothing tries to write an HTTP
		// response on the hijacked connection.
		resp.Status, resp.Committed = http.StatusSwitchingProtocols, true
	}

	if !s.addStream() {
		closeStream(conn, nil, websocket.CloseGoingAway, "server shutting down")
		_ = conn.Close()
		return nil
	}
	defer s.streams.Done()
	s.openStreams.Add(1)
	defer s.openStreams.Add(-1)
	s.stream(conn, sub, backlog, lost)
	return nil
}

// addStream counts a new stream unless Shutdown has begun.
func (s *Server) addStream() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.streams.Add(1)
	return true
}

// closeStreams makes every stream close, and refuses new ones.
func (s *Server) closeStreams() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.stopStreams()
}

// stream runs one WebSocket client until it goes away, stops answering
// pings, falls too far behind, or the server shuts down.
func (s *Server) stream(conn *websocket.Conn, sub *events.Subscription, backlog []events.Event, lost *events.Event) {
	// The reader's only jobs are answering pings, seeing pongs and the
	// client's close: client messages are discarded. It ends when the
	// connection fails, which the deferred Close below makes sure of.
	conn.SetReadLimit(wsReadLimit)
	readDeadline := func() error { return conn.SetReadDeadline(time.Now().Add(s.pongWait)) }
	_ = readDeadline()
	conn.SetPongHandler(func(string) error { return readDeadline() })
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			if _, _, err := conn.NextReader(); err != nil {
				return
			}
		}
	}()
	defer func() {
		_ = conn.Close()
		<-readerDone
	}()

	if lost != nil {
		if err := writeEvent(conn, *lost); err != nil {
			return
		}
	}
	for _, e := range backlog {
		if err := writeEvent(conn, e); err != nil {
			return
		}
	}

	ping := time.NewTicker(s.ping)
	defer ping.Stop()
	for {
		select {
		case <-s.streamsCtx.Done():
			closeStream(conn, readerDone, websocket.CloseGoingAway, "server shutting down")
			return
		case <-readerDone:
			return
		case e, ok := <-sub.C():
			if !ok {
				// Every event the hub queued has been written by now, so
				// the client resumes from the last one without a gap.
				var slow *events.SlowConsumerError
				if errors.As(sub.Err(), &slow) {
					closeStream(conn, readerDone, websocket.CloseTryAgainLater,
						fmt.Sprintf("slow consumer; resume with ?since=%d", slow.LastSeq))
				}
				return
			}
			if err := writeEvent(conn, e); err != nil {
				return
			}
		case <-ping.C:
			if err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(wsWriteTimeout)); err != nil {
				return
			}
		}
	}
}

func writeEvent(conn *websocket.Conn, e events.Event) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := conn.SetWriteDeadline(time.Now().Add(wsWriteTimeout)); err != nil {
		return err
	}
	return conn.WriteMessage(websocket.TextMessage, b)
}

// closeStream sends a close frame and waits briefly for the client's
// reply, which the reader sees, so that the client reads the reason rather
// than a reset connection.
func closeStream(conn *websocket.Conn, readerDone <-chan struct{}, code int, reason string) {
	msg := websocket.FormatCloseMessage(code, reason)
	if err := conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wsCloseGrace)); err != nil || readerDone == nil {
		return
	}
	select {
	case <-readerDone:
	case <-time.After(wsCloseGrace):
	}
}

// resumePoint reads ?since=<seq>: the last event sequence number a
// resuming client received. has is false when the client asks only for
// live events.
func resumePoint(q url.Values) (since uint64, has bool, err error) {
	if !q.Has("since") {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(q.Get("since"), 10, 64)
	if err != nil {
		return 0, false, fieldErr("since", "must be a non-negative integer event sequence number")
	}
	return n, true, nil
}
