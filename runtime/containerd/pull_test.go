package containerd

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

// tokenRegistry is a registry on 127.0.0.1 that asks for a bearer token
// from a realm the test chooses, and a token service that records every
// credential it is sent.
type tokenRegistry struct {
	registry, tokens *httptest.Server
	mu               sync.Mutex
	got              []string // credentials the token service saw
}

func newTokenRegistry(t *testing.T, realmHost string) *tokenRegistry {
	tr := &tokenRegistry{}
	tr.tokens = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_ = req.ParseForm()
		tr.mu.Lock()
		if a := req.Header.Get("Authorization"); a != "" {
			tr.got = append(tr.got, "header "+a)
		}
		if p := req.PostForm.Get("password"); p != "" {
			tr.got = append(tr.got, "form password "+p)
		}
		tr.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"token":"tok","access_token":"tok"}`)
	}))
	t.Cleanup(tr.tokens.Close)
	port := tr.tokens.URL[strings.LastIndex(tr.tokens.URL, ":")+1:]
	realm := fmt.Sprintf("http://%s:%s/token", realmHost, port)
	tr.registry = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Authorization") != "Bearer tok" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="registry",scope="repository:app:pull"`, realm))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("a", 64))
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(tr.registry.Close)
	return tr
}

func (tr *tokenRegistry) ref() string {
	return strings.TrimPrefix(tr.registry.URL, "http://") + "/app:1"
}

func (tr *tokenRegistry) credentialsSeen() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.got...)
}

// A registry whose token realm points to another host never receives the
// credentials there; a realm on the registry's own host does get them (the
// control that shows the test would see a leak).
func TestRegistryCredentialsOnlyToTheRegistrysHost(t *testing.T) {
	t.Parallel()
	auth := &runtime.RegistryAuth{Username: "tenant", Password: "s3cret-pass"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// "localhost" is another host name than the registry's 127.0.0.1.
	foreign := newTokenRegistry(t, "localhost")
	ref := foreign.ref()
	if _, _, err := newResolver(auth, ref[:strings.Index(ref, "/")]).Resolve(ctx, ref); err == nil {
		t.Error("resolved through a token realm on another host")
	}
	if got := foreign.credentialsSeen(); len(got) > 0 {
		t.Fatalf("a token realm on another host received the credentials: %v", got)
	}

	same := newTokenRegistry(t, "127.0.0.1")
	ref = same.ref()
	if _, _, err := newResolver(auth, ref[:strings.Index(ref, "/")]).Resolve(ctx, ref); err != nil {
		t.Fatalf("resolve through the registry's own token realm: %v", err)
	}
	if got := same.credentialsSeen(); len(got) == 0 {
		t.Fatal("the registry's own token realm was not sent the credentials: the check above proves nothing")
	}
}

func TestSameRegistry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		registry, host string
		want           bool
	}{
		{"registry.example.com", "registry.example.com", true},
		{"registry.example.com:5000", "registry.example.com:5001", true},
		{"registry.example.com", "auth.example.com", false},
		{"registry.example.com", "registry.example.com.evil.test", false},
		{"docker.io", "auth.docker.io", true},
		{"docker.io", "registry-1.docker.io", true},
		{"evil.test", "auth.docker.io", false},
		{"127.0.0.1:5000", "localhost:5000", false},
	} {
		if got := sameRegistry(tc.registry, tc.host); got != tc.want {
			t.Errorf("sameRegistry(%q, %q) = %v, want %v", tc.registry, tc.host, got, tc.want)
		}
	}
}
