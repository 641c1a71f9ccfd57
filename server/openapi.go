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

// asyncAPIDocument describes GET /ws: the stream, its authentication and
// resumption, and one message per event type. Tests compare it with the
// event types and fields the code publishes.
//
//go:embed asyncapi.yaml
var asyncAPIDocument []byte

func (s *Server) openAPI(c *echo.Context) error {
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, openAPIDocument)
}

func (s *Server) asyncAPI(c *echo.Context) error {
	return c.Blob(http.StatusOK, "application/yaml", asyncAPIDocument)
}
