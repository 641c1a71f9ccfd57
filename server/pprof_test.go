package server

import (
	"net/http"
	"strings"
	"testing"
)

// Profiles are served behind the token; an unknown one is a JSON 404.
func TestProfilesBehindToken(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	if rec := ts.do(t, http.MethodGet, "/debug/pprof/goroutine?debug=1", "", ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("without the token: %d", rec.Code)
	}
	rec := ts.do(t, http.MethodGet, "/debug/pprof/goroutine?debug=1", "")
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "goroutine profile:") {
		t.Fatalf("goroutine profile: %d %.200s", rec.Code, rec.Body.String())
	}
	if rec := ts.do(t, http.MethodGet, "/debug/pprof/heap", ""); rec.Code != http.StatusOK || rec.Body.Len() == 0 {
		t.Fatalf("heap profile: %d, %d bytes", rec.Code, rec.Body.Len())
	}
	if rec := ts.do(t, http.MethodGet, "/debug/pprof/nonesuch", ""); rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "nonesuch") {
		t.Fatalf("unknown profile: %d %s", rec.Code, rec.Body.String())
	}
}
