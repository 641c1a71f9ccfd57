package server

import (
	"context"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v5"

	"github.com/host-agent/host-agent/runtime"
)

// Headers of GET /instances/{id}/logs: headerLogOffset is the offset of the
// log's end when the answer was read (a header), or where a followed stream
// stopped (a trailer); since= resumes from it without a gap.
const headerLogOffset = "X-Log-Offset"

// followLogs streams an instance's output (follow=true), chunked, until the
// instance has exited and all it wrote is sent, the client leaves, the
// server shuts down, or runtime.MaxFollowBytes are sent (then the trailer
// X-Log-Truncated says so, and X-Log-Offset where to resume).
func (s *Server) followLogs(c *echo.Context, id string, tail int, tailGiven bool) error {
	lf, ok := s.rt.(runtime.LogFollower)
	if !ok {
		return fieldErr("follow", "this agent's runtime cannot follow logs")
	}
	from := int64(-1)
	if q := c.QueryParam("since"); q != "" || c.QueryParams().Has("since") {
		n, err := strconv.ParseInt(q, 10, 64)
		if err != nil || n < 0 {
			return fieldErr("since", "must be a log offset (an X-Log-Offset an earlier answer gave), 0 or more")
		}
		if tailGiven {
			return fieldErr("since", "give either since or tail, not both")
		}
		from = n
	}
	if !tailGiven && from < 0 {
		tail = 0 // only what is written from now on
	}
	// Not found, before anything is sent: a clean 404.
	if _, err := s.rt.Get(c.Request().Context(), id); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(c.Request().Context())
	defer cancel()
	stop := context.AfterFunc(s.streamsCtx, cancel)
	defer stop()

	w := c.Response()
	h := w.Header()
	h.Set(echo.HeaderContentType, echo.MIMETextPlainCharsetUTF8)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Trailer", headerLogOffset+", "+headerLogTruncated)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	flush := func() { _ = rc.Flush() }
	flush()
	next, truncated, err := lf.FollowLogs(ctx, id, from, tail, runtime.MaxFollowBytes, w, flush)
	if err != nil {
		// The status is sent; the stream just ends, and the cause is logged.
		s.log.Warn("following logs ended with an error", "instance_id", id, "error", err)
	}
	h.Set(headerLogOffset, strconv.FormatInt(next, 10))
	if truncated {
		h.Set(headerLogTruncated, "true")
	}
	return nil
}
