package server

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime"
)

// Until the start path sets up the rentals' network, a start asking for
// ports is refused before the runtime is called, naming the field: an
// instance must not run without the ports it asked for.
func TestStartWithPortsIsRefusedWithoutNetwork(t *testing.T) {
	t.Parallel()
	called := false
	ts := newTestServer(t, &fakeRuntime{start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
		called = true
		return running(spec), nil
	}})
	rec := ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"p","image":"nginx","ports":[{"container_port":22}]}`)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"field":"ports"`) {
		t.Fatalf("status %d: %s; want 400 naming ports", rec.Code, rec.Body)
	}
	if called {
		t.Fatal("the runtime was asked to start an instance whose ports cannot be published")
	}
	rec = ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"p","image":"nginx","ports":[{"container_port":22},{"container_port":22}]}`)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"field":"ports"`) || !strings.Contains(rec.Body.String(), "twice") {
		t.Fatalf("duplicate ports: status %d: %s", rec.Code, rec.Body)
	}
	rec = ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"p","image":"nginx","ports":[]}`)
	if rec.Code != http.StatusOK || !called {
		t.Fatalf("an empty ports list: status %d: %s", rec.Code, rec.Body)
	}
}
