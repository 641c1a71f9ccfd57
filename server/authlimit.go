package server

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"sync"
	"time"
)

// Bounds on failed authentication, per client IP: a client may fail
// authFailureBurst times at once and then once per authFailureEvery; past
// that its unauthenticated requests are answered 429 until it may again.
// Requests with the right token are never limited, so a client guessing
// from the central server's address cannot lock the central server out.
const (
	authFailureBurst = 20
	authFailureEvery = time.Second
	// maxTrackedClients bounds the limiter's memory under a flood from
	// many addresses; clients whose bucket has refilled are forgotten
	// first.
	maxTrackedClients = 10000
	// maxAuthHeaderBytes bounds the Authorization header; a longer one is
	// refused without being looked at.
	maxAuthHeaderBytes = 4096
)

// authLimiter is a token bucket per client IP, spent by failed
// authentications.
type authLimiter struct {
	now func() time.Time

	mu      sync.Mutex
	clients map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newAuthLimiter() *authLimiter {
	return &authLimiter{now: time.Now, clients: map[string]*bucket{}}
}

// fail spends one of ip's failures. It reports how long ip must wait when
// none is left (the failure is then not counted).
func (l *authLimiter) fail(ip string) (retryAfter time.Duration, limited bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.clients[ip]
	if b == nil {
		if len(l.clients) >= maxTrackedClients {
			l.forgetRefilled(now)
		}
		b = &bucket{tokens: authFailureBurst, last: now}
		l.clients[ip] = b
	}
	b.tokens = math.Min(authFailureBurst, b.tokens+float64(now.Sub(b.last))/float64(authFailureEvery))
	b.last = now
	if b.tokens < 1 {
		return time.Duration((1 - b.tokens) * float64(authFailureEvery)), true
	}
	b.tokens--
	return 0, false
}

// forgetRefilled drops the clients whose bucket is full again; if none is,
// it drops them all rather than grow.
func (l *authLimiter) forgetRefilled(now time.Time) {
	for ip, b := range l.clients {
		if b.tokens+float64(now.Sub(b.last))/float64(authFailureEvery) >= authFailureBurst {
			delete(l.clients, ip)
		}
	}
	if len(l.clients) >= maxTrackedClients {
		clear(l.clients)
	}
}

// clientIP is the address the connection comes from. Forwarding headers
// are not believed: the agent is reached directly, and a header is the
// first thing a guesser would vary.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// rateLimitedError answers 429 with a Retry-After header.
type rateLimitedError struct{ retryAfter time.Duration }

func (e *rateLimitedError) Error() string {
	return "too many failed authentications; retry later"
}

func (e *rateLimitedError) StatusCode() int { return http.StatusTooManyRequests }

// retryAfterSeconds is Retry-After's value: whole seconds, at least 1.
func (e *rateLimitedError) retryAfterSeconds() string {
	return fmt.Sprint(max(1, int(math.Ceil(e.retryAfter.Seconds()))))
}

// tokenInQuery reports whether the URL carries what looks like a bearer
// token: one under a usual parameter name, or the agent's token itself
// anywhere. URLs end up in logs and proxies' histories.
func tokenInQuery(r *http.Request, token string) bool {
	if r.URL.RawQuery == "" {
		return false
	}
	for k, vs := range r.URL.Query() {
		switch k {
		case "token", "access_token", "auth", "authorization", "bearer", "api_key", "apikey":
			return true
		}
		for _, v := range vs {
			if v == token || v == "Bearer "+token {
				return true
			}
		}
	}
	return false
}
