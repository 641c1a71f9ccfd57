package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/labstack/echo/v5"

	"github.com/host-agent/host-agent/runtime"
)

// errorResponse is the body of every failed request.
type errorResponse struct {
	// Error is a short message for the caller.
	Error string `json:"error"`
	// Field is the JSON path (or query or path parameter) at fault, when the
	// request was rejected for one field.
	Field string `json:"field,omitempty"`
	// Step is the step of starting an instance that failed.
	Step string `json:"step,omitempty"`
	// Code names a refusal the caller should act on by itself, e.g.
	// "draining": the host takes no new rentals; pick another.
	Code string `json:"code,omitempty"`
}

// maxPublicCause bounds how much of a cause's text (a registry's answer, say)
// is passed on to the caller.
const maxPublicCause = 512

// FieldError rejects a request because of one field, or because of its body
// as a whole when Field is empty. It is an errdefs.InvalidArgument.
type FieldError struct {
	// Field is the JSON path of the field, e.g. resources.cpus or env.FOO,
	// or the name of a query or path parameter.
	Field string
	// Msg says what is wrong with it, for the caller.
	Msg string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// Unwrap makes a FieldError an errdefs.InvalidArgument.
func (e *FieldError) Unwrap() error { return errdefs.ErrInvalidArgument }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// publicError is an error whose whole text may be shown to the caller, with
// the errdefs kind that decides its status whatever the cause's own kind.
type publicError struct {
	kind  error
	msg   string
	cause error
}

func (e *publicError) Error() string { return e.msg + ": " + e.cause.Error() }

// Unwrap lists kind first so that errdefs.Resolve finds it before any kind
// the cause carries.
func (e *publicError) Unwrap() []error { return []error{e.kind, e.cause} }

// statusError carries its own status: the few failures that no errdefs kind
// describes (the router's 404 and 405, a failed WebSocket handshake).
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string   { return e.msg }
func (e *statusError) StatusCode() int { return e.status }

// errUnauthorized is deliberately not errdefs.ErrUnauthenticated: a runtime
// error of that kind (a registry refusing credentials) must not read as the
// caller's own token being wrong.
var errUnauthorized = &statusError{status: http.StatusUnauthorized, msg: "missing or invalid bearer token"}

// errTokenInQuery refuses a token sent in the URL, where logs keep it.
var errTokenInQuery = &statusError{status: http.StatusUnauthorized,
	msg: "the bearer token belongs in the Authorization header, never in the URL"}

// classify decides the status and body for err. It is the one place that maps
// error kinds to HTTP statuses.
func classify(err error) (int, errorResponse) {
	var fe *FieldError
	if errors.As(err, &fe) {
		return http.StatusBadRequest, errorResponse{Error: fe.Msg, Field: fe.Field}
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return http.StatusRequestEntityTooLarge,
			errorResponse{Error: fmt.Sprintf("request body exceeds %d bytes", tooLarge.Limit)}
	}
	var draining *runtime.DrainingError
	if errors.As(err, &draining) {
		return http.StatusServiceUnavailable, errorResponse{Error: publicCause("host is draining", draining), Code: "draining"}
	}
	var sc echo.HTTPStatusCoder
	if errors.As(err, &sc) && sc.StatusCode() != 0 {
		code := sc.StatusCode()
		msg := http.StatusText(code)
		var se *statusError
		if errors.As(err, &se) {
			msg = se.msg
		}
		return code, errorResponse{Error: msg}
	}

	var body errorResponse
	var step *runtime.StepError
	if errors.As(err, &step) {
		body.Step = step.Step
	}
	kind := errdefs.Resolve(err)

	// A failed pull is about the image or its registry, not about the
	// agent, unless the runtime itself is what failed to answer.
	if step != nil && step.Step == runtime.StepPull && !errdefs.IsUnavailable(kind) {
		body.Error = publicCause("pulling image failed", step.Err)
		// What went wrong, for the scheduler to act on: not_found,
		// unauthorized, disk_full, stalled.
		var pe *runtime.PullError
		if errors.As(err, &pe) {
			body.Code = pe.Kind
		}
		switch {
		case errdefs.IsNotFound(kind):
			body.Error, body.Field = publicCause("image not found", step.Err), "image"
			return http.StatusBadRequest, body
		case errdefs.IsInvalidArgument(kind):
			body.Field = "image"
			return http.StatusBadRequest, body
		case errdefs.IsUnauthorized(kind), errdefs.IsPermissionDenied(kind):
			// Not 401: that would read as the agent's own token being wrong.
			body.Error, body.Field = publicCause("registry refused access", step.Err), "registry_auth"
			return http.StatusBadRequest, body
		}
		return http.StatusBadGateway, body
	}

	// A runtime error about one request field (the host port range
	// exhausted: ports; a volume of another owner: volumes[0].owner) names
	// it.
	var fielder interface{ ErrorField() string }
	if errors.As(err, &fielder) {
		body.Field = fielder.ErrorField()
	}
	// Else a GPU the allocator does not know is the gpus field's fault.
	if body.Field == "" && step != nil && step.Step == runtime.StepAllocate && errdefs.IsInvalidArgument(kind) {
		body.Field = "gpus"
	}

	status := http.StatusInternalServerError
	body.Error = "internal error"
	switch {
	// The caller's own mistakes are explained with the runtime's words
	// (which instance, which spec); the agent's failures are not.
	case errdefs.IsNotFound(kind):
		status, body.Error = http.StatusNotFound, publicCause("not found", err)
	case errdefs.IsInvalidArgument(kind):
		status, body.Error = http.StatusBadRequest, publicCause("invalid request", err)
	case errdefs.IsPermissionDenied(kind):
		// The request's own fault (a volume of another owner), not the
		// agent's token: not 401.
		status, body.Error = http.StatusForbidden, publicCause("forbidden", err)
	case errdefs.IsConflict(kind), errdefs.IsAlreadyExists(kind),
		errdefs.IsFailedPrecondition(kind), errdefs.IsResourceExhausted(kind):
		status, body.Error = http.StatusConflict, publicCause("conflict", err)
	case errdefs.IsUnavailable(kind):
		status, body.Error = http.StatusServiceUnavailable, "container runtime unavailable"
	case errdefs.IsDeadlineExceeded(kind):
		// The runtime is overloaded rather than broken: the same request
		// sent again (starts and terminates are idempotent) finishes the
		// work.
		status, body.Error, body.Code = http.StatusGatewayTimeout, "the container runtime did not finish in time; send the request again", "timeout"
	}
	var pub *publicError
	if errors.As(err, &pub) {
		body.Error = publicCause(pub.msg, pub)
	}
	return status, body
}

// publicCause is the text of a cause the caller may act on (which image,
// which instance), bounded in length; fallback when there is none.
func publicCause(fallback string, err error) string {
	if err == nil {
		return fallback
	}
	msg := err.Error()
	if msg == "" {
		return fallback
	}
	if len(msg) > maxPublicCause {
		msg = strings.ToValidUTF8(msg[:maxPublicCause], "") + "..."
	}
	return msg
}

// handleError is the Echo HTTPErrorHandler: it writes err as the JSON error
// body and logs the cause, which for a server error the caller never sees.
func (s *Server) handleError(c *echo.Context, err error) {
	if resp, uerr := echo.UnwrapResponse(c.Response()); uerr == nil && resp.Committed {
		s.log.Warn("error after the response was sent", "method", c.Request().Method,
			"path", c.Request().URL.Path, "error", err)
		return
	}
	status, body := classify(err)
	switch {
	case status >= 500 && !errors.Is(err, context.Canceled):
		s.log.Error("request failed", "method", c.Request().Method, "path", c.Request().URL.Path,
			"status", status, "error", err)
	default:
		s.log.Debug("request rejected", "method", c.Request().Method, "path", c.Request().URL.Path,
			"status", status, "error", err)
	}
	if status == http.StatusUnauthorized {
		c.Response().Header().Set(echo.HeaderWWWAuthenticate, "Bearer")
	}
	var limited *rateLimitedError
	if errors.As(err, &limited) {
		c.Response().Header().Set(echo.HeaderRetryAfter, limited.retryAfterSeconds())
	}
	if werr := c.JSON(status, body); werr != nil {
		s.log.Debug("writing error response", "error", werr)
	}
}
