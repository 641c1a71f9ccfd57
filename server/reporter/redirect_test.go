package reporter

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// TestRedirectDoesNotCarryTheToken: a central server (or whatever answers on
// its name) that redirects to another port of the same host must not
// receive the token there. Go's client would re-send Authorization on a 307
// to the same host name, whatever the port.
func TestRedirectDoesNotCarryTheToken(t *testing.T) {
	var mu sync.Mutex
	var elsewhere []http.Header
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		elsewhere = append(elsewhere, r.Header.Clone())
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	defer other.Close()
	// Same host name (127.0.0.1), another port: the case Go forwards
	// Authorization to.
	h := newHarness(t, nil)
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirecting.Close()

	opts := h.options()
	opts.ServerURL = redirecting.URL
	opts.HTTPClient = &http.Client{} // the default client follows redirects
	h.run(opts, func(round int) bool { return round >= 3 })

	mu.Lock()
	defer mu.Unlock()
	for _, hdr := range elsewhere {
		if strings.Contains(hdr.Get("Authorization"), testToken) {
			t.Fatalf("the redirect target received the token: %v", hdr)
		}
	}
	if len(elsewhere) > 0 {
		t.Fatalf("the reporter followed the redirect %d times", len(elsewhere))
	}
	if !strings.Contains(h.logs.String(), "not followed") {
		t.Errorf("logs do not say the redirect was refused:\n%s", h.logs.String())
	}
}
