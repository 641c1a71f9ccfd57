package server

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// authAttempt is one way of presenting (or failing to present) the token.
type authAttempt struct {
	name   string
	header string // the Authorization header; "" sends none
	query  string // appended to the path
}

func badAuthAttempts() []authAttempt {
	return []authAttempt{
		{name: "missing"},
		{name: "wrong", header: "Bearer wrong-token"},
		{name: "empty", header: "Bearer "},
		{name: "scheme only", header: "Bearer"},
		{name: "token without scheme", header: testToken},
		{name: "other scheme", header: "Basic " + testToken},
		{name: "prefix of token", header: "Bearer " + testToken[:len(testToken)-1]},
		{name: "token with suffix", header: "Bearer " + testToken + "x"},
		{name: "over-long", header: "Bearer " + strings.Repeat("t", 64<<10)},
		{name: "over-long with token", header: "Bearer " + testToken + strings.Repeat(" ", maxAuthHeaderBytes)},
		{name: "token in query", query: "token=" + testToken},
		{name: "access_token in query", query: "access_token=" + testToken},
		{name: "token in query and header", header: "Bearer " + testToken, query: "access_token=" + testToken},
		{name: "token value under another name", header: "Bearer " + testToken, query: "x=" + testToken},
	}
}

// Every route the server registers, except the two health checks, refuses
// every bad way of authenticating, before its handler runs: the fake
// runtime panics on any call, which would answer 500. New routes are
// covered because the routes are read from the server.
func TestEveryRouteRefusesBadAuth(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	routes := ts.Routes()
	if len(routes) < 10 {
		t.Fatalf("only %d routes registered: %v", len(routes), routes)
	}
	for i, r := range routes {
		if r.Method == http.MethodGet && (r.Path == healthPath || r.Path == readinessPath) {
			continue
		}
		path := strings.ReplaceAll(r.Path, ":id", "inst-1")
		for _, a := range badAuthAttempts() {
			t.Run(r.Method+" "+r.Path+"/"+a.name, func(t *testing.T) {
				target := path
				if a.query != "" {
					target += "?" + a.query
				}
				var body *strings.Reader
				if r.Method == http.MethodPost {
					body = strings.NewReader(`{"instance_id":"inst-1","image":"nginx"}`)
				} else {
					body = strings.NewReader("")
				}
				req := httptest.NewRequest(r.Method, target, body)
				// Each route from its own address, so that the rate limit
				// (tested below) does not answer first.
				req.RemoteAddr = "127.0.1." + strconv.Itoa(i) + ":5555"
				if a.header != "" {
					req.Header.Set("Authorization", a.header)
				}
				if r.Path == "/ws" {
					req.Header.Set("Connection", "Upgrade")
					req.Header.Set("Upgrade", "websocket")
					req.Header.Set("Sec-WebSocket-Version", "13")
					req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
				}
				rec := httptest.NewRecorder()
				ts.Handler().ServeHTTP(rec, req)
				if rec.Code != http.StatusUnauthorized {
					t.Fatalf("status %d, want 401: %.200s", rec.Code, rec.Body)
				}
				if errorBody(t, rec); rec.Header().Get("WWW-Authenticate") != "Bearer" {
					t.Errorf("401 without WWW-Authenticate: Bearer")
				}
			})
		}
	}
	// The same checks let the right token through (here: a route that
	// needs no runtime).
	if rec := ts.do(t, http.MethodGet, "/openapi.json", ""); rec.Code != http.StatusOK {
		t.Fatalf("the right token: status %d", rec.Code)
	}
}

// A real WebSocket upgrade over TCP with the token in the query string is
// refused before the connection is upgraded.
func TestWebSocketRefusesTokenInQuery(t *testing.T) {
	t.Parallel()
	srv := wsServer(t, newTestServer(t, &fakeRuntime{}))
	for _, q := range []string{"?token=" + testToken, "?access_token=" + testToken, "?since=0&x=" + testToken} {
		for _, header := range []string{"", testToken} {
			_, resp, err := dialWS(t, srv, q, header)
			if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("query %q, header token %v: err %v, response %v", q, header != "", err, resp)
			}
		}
	}
	conn, _, err := dialWS(t, srv, "?since=0", testToken)
	if err != nil {
		t.Fatalf("the right token in the header: %v", err)
	}
	conn.Close()
}

// A client failing authentication is answered 429 with Retry-After once it
// has spent its failures, and again 401 once the wait has passed; another
// address is not affected, forwarding headers do not get round it, and the
// right token is never limited.
func TestFailedAuthenticationIsRateLimitedPerClient(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	var mu sync.Mutex
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	ts.authFailures.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	send := func(remote, token string, forwardedFor string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/instances", nil)
		req.RemoteAddr = remote
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if forwardedFor != "" {
			req.Header.Set("X-Forwarded-For", forwardedFor)
			req.Header.Set("X-Real-IP", forwardedFor)
		}
		rec := httptest.NewRecorder()
		ts.Handler().ServeHTTP(rec, req)
		return rec
	}
	const guesser, other = "127.0.0.7:40000", "127.0.0.8:40000"
	for i := range authFailureBurst {
		// The port changes as a new connection's would.
		if rec := send("127.0.0.7:"+strconv.Itoa(40000+i), "guess", ""); rec.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: status %d, want 401", i+1, rec.Code)
		}
	}
	for _, xff := range []string{"", "127.0.0.99", "10.1.2.3"} {
		rec := send(guesser, "guess", xff)
		if rec.Code != http.StatusTooManyRequests {
			t.Fatalf("past the burst (X-Forwarded-For %q): status %d, want 429", xff, rec.Code)
		}
		if ra, err := strconv.Atoi(rec.Header().Get("Retry-After")); err != nil || ra < 1 {
			t.Errorf("Retry-After %q, want whole seconds >= 1", rec.Header().Get("Retry-After"))
		}
		errorBody(t, rec)
	}
	if rec := send(guesser, "", ""); rec.Code != http.StatusTooManyRequests {
		t.Errorf("no token past the burst: status %d, want 429", rec.Code)
	}
	if rec := send(other, "guess", ""); rec.Code != http.StatusUnauthorized {
		t.Errorf("another client: status %d, want 401", rec.Code)
	}
	// The right token passes the limiter; the fake runtime has no List,
	// so the handler's panic answers 500, past authentication.
	if rec := send(guesser, testToken, ""); rec.Code == http.StatusTooManyRequests || rec.Code == http.StatusUnauthorized {
		t.Errorf("the right token from a limited client: status %d", rec.Code)
	}
	advance(authFailureEvery)
	if rec := send(guesser, "guess", ""); rec.Code != http.StatusUnauthorized {
		t.Errorf("after waiting: status %d, want 401", rec.Code)
	}
	if rec := send(guesser, "guess", ""); rec.Code != http.StatusTooManyRequests {
		t.Errorf("after spending the refill: status %d, want 429", rec.Code)
	}
	// The health checks are never limited.
	if rec := send(guesser, "", ""); rec.Code != http.StatusTooManyRequests {
		t.Errorf("status %d, want 429", rec.Code)
	}
	req := httptest.NewRequest(http.MethodGet, healthPath, nil)
	req.RemoteAddr = guesser
	rec := httptest.NewRecorder()
	ts.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("health check from a limited client: status %d", rec.Code)
	}
}

// The limiter's memory stays bounded under failures from many addresses.
func TestAuthLimiterForgetsClients(t *testing.T) {
	t.Parallel()
	l := newAuthLimiter()
	for i := range maxTrackedClients + 500 {
		l.fail("10.0." + strconv.Itoa(i/256) + "." + strconv.Itoa(i%256))
	}
	if n := len(l.clients); n > maxTrackedClients {
		t.Fatalf("%d clients tracked, at most %d expected", n, maxTrackedClients)
	}
}
