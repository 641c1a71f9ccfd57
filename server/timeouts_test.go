package server

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

// serveOn runs ts.Serve on a fresh loopback listener until the test ends.
func serveOn(t *testing.T, ts *testServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ts.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-served
	})
	return ln.Addr().String()
}

// TestSlowBodyIsCutOff: a client trickling its body one byte a second is
// disconnected once the body timeout passes, and other clients are served
// meanwhile.
func TestSlowBodyIsCutOff(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{ping: func(context.Context) error { return nil }}, func(o *Options) {
		o.ReadHeaderTimeout, o.BodyTimeout = time.Second, 2*time.Second
	})
	addr := serveOn(t, ts)

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const bodyLen = 120
	fmt.Fprintf(conn, "POST /terminate_instance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", testToken, bodyLen)

	closed := make(chan string, 1)
	go func() {
		// The server answers (or just closes) once it gives up on the
		// body; either way the read ends.
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			closed <- err.Error()
			return
		}
		resp.Body.Close()
		closed <- resp.Status
	}()

	// Another client is served while the trickle goes on.
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz during a slow body: %v %v", resp, err)
	}
	resp.Body.Close()

	for sent := 0; sent < bodyLen; sent++ {
		select {
		case how := <-closed:
			t.Logf("cut off after %d of %d bytes: %s", sent, bodyLen, how)
			// The connection is gone: further writes fail (the first
			// may still be buffered).
			for range 5 {
				if _, err := conn.Write([]byte(" ")); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			t.Fatal("the connection still accepts bytes after the answer")
		case <-time.After(time.Second):
		}
		if _, err := conn.Write([]byte(" ")); err != nil {
			t.Logf("cut off after %d of %d bytes: %v", sent, bodyLen, err)
			return
		}
	}
	t.Fatalf("a body trickled over %d seconds was read to its end", bodyLen)
}

// TestBodyTimeoutDoesNotCancelSlowHandlers: the body timeout bounds the
// upload, not the handler; a start that takes longer than it (a pull) still
// has its context and answers.
func TestBodyTimeoutDoesNotCancelSlowHandlers(t *testing.T) {
	t.Parallel()
	rt := &fakeRuntime{
		terminate: func(ctx context.Context, id string, _ time.Duration) error {
			select {
			case <-time.After(3 * time.Second):
				return nil
			case <-ctx.Done():
				return fmt.Errorf("request context ended: %w", context.Cause(ctx))
			}
		},
		get: func(context.Context, string) (runtime.Instance, error) { return runtime.Instance{}, nil },
	}
	// Headers and body must be in within a second; the handler takes three.
	ts := newTestServer(t, rt, func(o *Options) { o.ReadHeaderTimeout, o.BodyTimeout = 500*time.Millisecond, 500*time.Millisecond })
	addr := serveOn(t, ts)
	req, _ := http.NewRequest("POST", "http://"+addr+"/terminate_instance", strings.NewReader(`{"instance_id":"a"}`))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("terminate outliving the body timeout: %s (%s)", resp.Status, ts.logs)
	}
}

// TestConnectionCap: no more than MaxConnections are served at once; a
// freed slot serves the next.
func TestConnectionCap(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{}, func(o *Options) { o.MaxConnections = 2 })
	addr := serveOn(t, ts)
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	// Make sure both are accepted (served) before the third arrives.
	for _, c := range held {
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	client := &http.Client{Timeout: time.Second}
	if resp, err := client.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("a third connection was served with the cap at 2: %s", resp.Status)
	}
	held[0].Close()
	client.Timeout = 30 * time.Second
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("after a slot was freed: %v", err)
	}
	resp.Body.Close()
}
