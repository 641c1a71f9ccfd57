package server

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/labstack/echo/v5"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
)

// TestClassify covers the kinds the handler tests do not reach through a
// route.
func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		err    error
		status int
		msg    string
		field  string
	}{
		{name: "field", err: fieldErr("env.A", "bad"), status: 400, msg: "bad", field: "env.A"},
		{name: "wrapped field", err: fmt.Errorf("x: %w", fieldErr("env.A", "bad")), status: 400, msg: "bad", field: "env.A"},
		{name: "body too large", err: &http.MaxBytesError{Limit: 1 << 20}, status: 413, msg: "request body exceeds 1048576 bytes"},
		{name: "router 404", err: echo.ErrNotFound, status: 404, msg: "Not Found"},
		{name: "router 405", err: echo.ErrMethodNotAllowed, status: 405, msg: "Method Not Allowed"},
		{name: "token", err: errUnauthorized, status: 401, msg: "missing or invalid bearer token"},
		{name: "runtime unauthenticated is not the caller's token", err: errdefs.ErrUnauthenticated, status: 500, msg: "internal error"},
		{name: "readiness timeout", status: 503, msg: "containerd unavailable: context deadline exceeded",
			err: &publicError{kind: errdefs.ErrUnavailable, msg: "containerd unavailable", cause: context.DeadlineExceeded}},
		{name: "outermost kind wins", err: fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, errdefs.ErrNotFound), status: 400},
		{name: "pull with bad reference", status: 400, field: "image",
			err: &runtime.StepError{Step: runtime.StepPull, Err: fmt.Errorf("parse: %w", errdefs.ErrInvalidArgument)}},
		{name: "canceled", err: context.Canceled, status: 500, msg: "internal error"},
		{name: "runtime too slow", err: fmt.Errorf("delete task: %w", context.DeadlineExceeded), status: 504,
			msg: "the container runtime did not finish in time; send the request again"},
		{name: "host ports exhausted", status: 409, field: "ports",
			err: &runtime.StepError{Step: runtime.StepAllocate, Err: &hostport.Error{Msg: "host port range exhausted", Kind: errdefs.ErrConflict}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			status, body := classify(tt.err)
			if status != tt.status {
				t.Errorf("status %d, want %d", status, tt.status)
			}
			if tt.msg != "" && body.Error != tt.msg {
				t.Errorf("message %q, want %q", body.Error, tt.msg)
			}
			if body.Error == "" {
				t.Errorf("empty message")
			}
			if body.Field != tt.field {
				t.Errorf("field %q, want %q", body.Field, tt.field)
			}
		})
	}
}
