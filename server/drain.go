package server

import (
	"context"
	"net/http"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/labstack/echo/v5"
)

// Drainer keeps the host's drained state where the runtime keeps its own,
// so that it survives an agent restart; both back ends provide it. The
// lifecycle reads it to refuse new rentals and pre-pulls
// (runtime.DrainingError); the server sets and clears it.
type Drainer interface {
	SetDrain(ctx context.Context, reason string, at time.Time) error
	ClearDrain(ctx context.Context) error
	runtime.DrainState
}

// DrainRequest is the body of POST /drain.
type DrainRequest struct {
	// Reason says why, for operators and the central server.
	Reason string `json:"reason,omitempty"`
}

// DrainStatus says whether the host takes new rentals. It is the answer of
// POST /drain and POST /undrain, and part of GET /readyz.
type DrainStatus struct {
	Draining bool       `json:"draining"`
	Reason   string     `json:"reason,omitempty"`
	Since    *time.Time `json:"since,omitempty"`
}

// maxDrainReason bounds the reason kept in the runtime's labels.
const maxDrainReason = 256

// errNoDrainer answers the drain routes of an agent built without one.
var errNoDrainer = &statusError{status: http.StatusNotImplemented, msg: "drain unavailable: this runtime keeps no drain state"}

func (s *Server) drainHost(c *echo.Context) error {
	if s.drain == nil {
		return errNoDrainer
	}
	var req DrainRequest
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if len(req.Reason) > maxDrainReason {
		return fieldErr("reason", "at most %d bytes", maxDrainReason)
	}
	if err := s.drain.SetDrain(c.Request().Context(), req.Reason, time.Now()); err != nil {
		return err
	}
	s.ready.forget()
	s.log.Info("host drained: new rentals are refused", "reason", req.Reason)
	return s.answerDrain(c)
}

func (s *Server) undrainHost(c *echo.Context) error {
	if s.drain == nil {
		return errNoDrainer
	}
	if err := s.drain.ClearDrain(c.Request().Context()); err != nil {
		return err
	}
	s.ready.forget()
	s.log.Info("host undrained: new rentals are accepted")
	return s.answerDrain(c)
}

func (s *Server) answerDrain(c *echo.Context) error {
	st, err := s.drainStatus(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, st)
}

// drainStatus reads the state back from the runtime; nil Drainer: never
// drained.
func (s *Server) drainStatus(ctx context.Context) (DrainStatus, error) {
	if s.drain == nil {
		return DrainStatus{}, nil
	}
	reason, since, drained, err := s.drain.Drained(ctx)
	if err != nil || !drained {
		return DrainStatus{}, err
	}
	st := DrainStatus{Draining: true, Reason: reason}
	if !since.IsZero() {
		st.Since = &since
	}
	return st, nil
}
