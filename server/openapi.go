package server

import (
	_ "embed"
	"net/http"

	"github.com/labstack/echo/v5"
)

// openAPIDocument describes every route and body of the API. Tests compare
// it with the registered routes and the request and response structs.
//
//go:embed openapi.json
var openAPIDocument []byte

func (s *Server) openAPI(c *echo.Context) error {
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, openAPIDocument)
}
