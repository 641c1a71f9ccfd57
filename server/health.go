package server

import (
	"context"
	"net/http"

	"github.com/containerd/errdefs"
	"github.com/labstack/echo/v5"
)

// healthz answers as long as the agent's HTTP server runs.
func (s *Server) healthz(c *echo.Context) error {
	return c.JSON(http.StatusOK, StatusResponse{Status: "ok", AgentID: s.agentID})
}

// readyz answers whether the container runtime does, so that the agent is
// not sent work it cannot start.
func (s *Server) readyz(c *echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), readinessTimeout)
	defer cancel()
	if err := s.rt.Ping(ctx); err != nil {
		// Unavailable whatever the cause's kind: a runtime that does not
		// answer within the timeout is not ready either.
		return &publicError{kind: errdefs.ErrUnavailable, msg: s.runtimeName + " unavailable", cause: err}
	}
	if s.network != nil {
		if err := s.network.Check(ctx); err != nil {
			return &publicError{kind: errdefs.ErrUnavailable, msg: "rentals' network unavailable", cause: err}
		}
	}
	resp := StatusResponse{Status: "ready", AgentID: s.agentID, Runtime: s.runtimeName}
	if st, err := s.drainStatus(ctx); err != nil {
		s.log.Warn("drain state unreadable", "error", err)
	} else {
		resp.Drain = &st
	}
	return c.JSON(http.StatusOK, resp)
}
