package server

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/labstack/echo/v5"
)

// readinessTTL is how long a readiness answer is reused. GET /readyz needs
// no token, and each check asks the runtime and runs the network's
// iptables checks, which take the host's xtables lock: a flood of probes
// must not turn into a flood of checks contending with the rentals' own
// rule changes.
const readinessTTL = time.Second

// healthz answers as long as the agent's HTTP server runs.
func (s *Server) healthz(c *echo.Context) error {
	return c.JSON(http.StatusOK, StatusResponse{Status: "ok", AgentID: s.agentID})
}

// readyz answers whether the container runtime does, so that the agent is
// not sent work it cannot start. The answer is at most readinessTTL old.
func (s *Server) readyz(c *echo.Context) error {
	resp, err := s.ready.get(c.Request().Context(), s.checkReadiness)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, resp)
}

// checkReadiness asks the runtime, the network and the drain state.
func (s *Server) checkReadiness(ctx context.Context) (StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, readinessTimeout)
	defer cancel()
	if err := s.rt.Ping(ctx); err != nil {
		// Unavailable whatever the cause's kind: a runtime that does not
		// answer within the timeout is not ready either.
		return StatusResponse{}, &publicError{kind: errdefs.ErrUnavailable, msg: s.runtimeName + " unavailable", cause: err}
	}
	if s.network != nil {
		if err := s.network.Check(ctx); err != nil {
			return StatusResponse{}, &publicError{kind: errdefs.ErrUnavailable, msg: "rentals' network unavailable", cause: err}
		}
	}
	resp := StatusResponse{Status: "ready", AgentID: s.agentID, Runtime: s.runtimeName}
	if st, err := s.drainStatus(ctx); err != nil {
		s.log.Warn("drain state unreadable", "error", err)
	} else {
		resp.Drain = &st
	}
	return resp, nil
}

// readiness keeps the last readiness answer for readinessTTL, and lets
// requests that find none wait for the one check in flight rather than
// each run their own.
type readiness struct {
	now func() time.Time

	mu      sync.Mutex
	checked time.Time // when the kept answer was made; zero: none
	resp    StatusResponse
	err     error
	// running is closed when the check in flight ends; nil: none.
	running chan struct{}
	// gen counts forget calls: a check begun before one keeps nothing.
	gen uint64
	// waiting counts the requests waiting for the check in flight.
	waiting int
}

// get answers the kept answer while it is fresh, else waits for a check:
// the one in flight, or one it runs itself. The check is not cancelled
// with the request that runs it, since others wait for it; it has its own
// timeout.
func (r *readiness) get(ctx context.Context, check func(context.Context) (StatusResponse, error)) (StatusResponse, error) {
	r.mu.Lock()
	if !r.checked.IsZero() && r.now().Sub(r.checked) < readinessTTL {
		defer r.mu.Unlock()
		return r.resp, r.err
	}
	if running := r.running; running != nil {
		r.waiting++
		r.mu.Unlock()
		var err error
		select {
		case <-running:
		case <-ctx.Done():
			err = ctx.Err()
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.waiting--
		if err != nil {
			return StatusResponse{}, err
		}
		return r.resp, r.err
	}
	running, gen := make(chan struct{}), r.gen
	r.running = running
	r.mu.Unlock()

	var resp StatusResponse
	var err error = errReadinessPanicked
	defer func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.gen == gen {
			r.resp, r.err, r.checked = resp, err, r.now()
		}
		if r.running == running {
			r.running = nil
		}
		close(running)
	}()
	resp, err = check(context.WithoutCancel(ctx))
	return resp, err
}

// errReadinessPanicked is what requests waiting for a check that panicked
// are answered (the panic itself answers its own request).
var errReadinessPanicked = &publicError{kind: errdefs.ErrUnavailable, msg: "readiness unknown", cause: errors.New("the check failed")}

// forget drops the kept answer and any check in flight, so that the next
// request checks anew: the drain state they hold has just changed.
func (r *readiness) forget() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	r.checked = time.Time{}
	r.running = nil
}
