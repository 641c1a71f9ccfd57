package server

import (
	"errors"
	"net/http"

	"github.com/containerd/errdefs"
	"github.com/labstack/echo/v5"
)

// hostReport answers GET /host with the report the central server gets at
// registration, read at this moment. Parts that cannot be read are left
// zero and named in its warnings rather than failing the whole report.
func (s *Server) hostReport(c *echo.Context) error {
	if s.host == nil {
		return &publicError{kind: errdefs.ErrUnavailable, msg: "host report unavailable", cause: errors.New("no host reporter configured")}
	}
	report, err := s.host.Collect(c.Request().Context())
	if err != nil {
		s.log.Warn("host report incomplete", "error", err)
	}
	return c.JSON(http.StatusOK, report)
}
