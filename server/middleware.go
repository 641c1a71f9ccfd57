package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/labstack/echo/v5"
)

// logRequests logs one line per request: method, path, route, status and
// duration. It writes a handler's error itself, through the one error
// handler, so that the status it logs is the one sent. Neither headers nor
// bodies are logged: they hold the bearer token and registry passwords.
func (s *Server) logRequests(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		start := time.Now()
		if err := next(c); err != nil {
			s.handleError(c, err)
		}
		status := 0
		var size int64
		if resp, err := echo.UnwrapResponse(c.Response()); err == nil {
			status, size = resp.Status, resp.Size
		}
		req := c.Request()
		took := time.Since(start)
		s.metrics.observe(req.Method, c.Path(), status, took)
		s.log.LogAttrs(req.Context(), requestLogLevel(req.Method, c.Path(), status), "request",
			slog.String("method", req.Method),
			slog.String("path", req.URL.Path),
			slog.String("route", c.Path()),
			slog.Int("status", status),
			slog.Int64("bytes", size),
			slog.Float64("duration_seconds", took.Seconds()),
			slog.String("remote", req.RemoteAddr),
		)
		return nil
	}
}

// requestLogLevel is info, but debug for a probe that succeeded: load
// balancers, supervisors and Prometheus call the health checks and the
// metrics every few seconds, and their lines would drown the rest. A probe
// that fails (any status from 400, including a handler's error written as
// one) is logged at info like any request.
func requestLogLevel(method, route string, status int) slog.Level {
	if method == http.MethodGet && status > 0 && status < http.StatusBadRequest {
		switch route {
		case healthPath, readinessPath, metricsPath:
			return slog.LevelDebug
		}
	}
	return slog.LevelInfo
}

// recoverPanics turns a handler's panic into a 500, so that one bad request
// does not take the agent, and the tenants' event streams, down with it.
func (s *Server) recoverPanics(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) (err error) {
		defer func() {
			r := recover()
			if r == nil {
				return
			}
			if r == http.ErrAbortHandler {
				panic(r) // net/http's way of aborting a response on purpose
			}
			s.log.Error("panic serving request", "method", c.Request().Method,
				"path", c.Request().URL.Path, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("panic: %v", r)
		}()
		return next(c)
	}
}

// authenticate demands the bearer token on every route but the health
// checks, which load balancers and supervisors call without one. It runs
// after routing, so an unknown path without a token is a 401 and with one a
// 404: a caller without the token learns nothing about which routes exist.
// A token in the URL is refused even when the header is right, and a
// client's failures are rate-limited (authLimiter).
//
// The metrics token, when configured, is accepted on GET /metrics only: on
// any other route it is refused as any wrong token is.
func (s *Server) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	// Comparing digests keeps the comparison constant-time even in the
	// token's length.
	want := sha256.Sum256([]byte(s.token))
	wantMetrics := sha256.Sum256([]byte(s.metricsTok))
	return func(c *echo.Context) error {
		ri := c.RouteInfo()
		if ri.Method == http.MethodGet && (ri.Path == healthPath || ri.Path == readinessPath) {
			return next(c)
		}
		req := c.Request()
		header := req.Header.Get(echo.HeaderAuthorization)
		scheme, token, ok := strings.Cut(header, " ")
		got := sha256.Sum256([]byte(strings.TrimLeft(token, " ")))
		bearer := ok && len(header) <= maxAuthHeaderBytes && strings.EqualFold(scheme, "Bearer")
		valid := bearer && subtle.ConstantTimeCompare(got[:], want[:]) == 1
		// Both comparisons always run, so that the time taken does not
		// tell which token a guess came close to.
		validMetrics := bearer && s.metricsTok != "" && subtle.ConstantTimeCompare(got[:], wantMetrics[:]) == 1
		if validMetrics && ri.Method == http.MethodGet && ri.Path == metricsPath {
			valid = true
		}
		inQuery := tokenInQuery(req, s.token) || (s.metricsTok != "" && tokenInQuery(req, s.metricsTok))
		if valid && !inQuery {
			return next(c)
		}
		if wait, limited := s.authFailures.fail(clientIP(req)); limited {
			return &rateLimitedError{retryAfter: wait}
		}
		if inQuery {
			return errTokenInQuery
		}
		return errUnauthorized
	}
}
