package server

import (
	"fmt"
	"net/http/pprof"
	rpprof "runtime/pprof"

	"github.com/containerd/errdefs"
	"github.com/labstack/echo/v5"
)

// serveProfile serves the Go runtime's profiles, as net/http/pprof does,
// behind the bearer token like every route but the health checks: profile
// (CPU, ?seconds=N), trace (?seconds=N), cmdline, symbol, and every named
// profile (goroutine, heap, allocs, block, mutex, threadcreate; ?debug=1
// for text). An unknown name is a 404.
func (s *Server) serveProfile(c *echo.Context) error {
	name := c.Param("profile")
	w, r := c.Response(), c.Request()
	switch name {
	case "profile":
		pprof.Profile(w, r)
	case "trace":
		pprof.Trace(w, r)
	case "cmdline":
		pprof.Cmdline(w, r)
	case "symbol":
		pprof.Symbol(w, r)
	default:
		if rpprof.Lookup(name) == nil {
			return fmt.Errorf("no profile named %q: %w", name, errdefs.ErrNotFound)
		}
		pprof.Handler(name).ServeHTTP(w, r)
	}
	return nil
}
