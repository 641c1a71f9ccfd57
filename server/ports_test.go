package server

import (
	"context"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
)

// The ports asked for reach the runtime spelled canonically (tcp filled
// in), and the host ports the runtime reserved come back in the answer.
// Bad lists are refused naming the field, before the runtime is called.
func TestStartWithPorts(t *testing.T) {
	t.Parallel()
	var got []hostport.PortRequest
	ts := newTestServer(t, &fakeRuntime{start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
		got = spec.Ports
		inst := running(spec)
		for i, p := range spec.Ports {
			inst.Ports = append(inst.Ports, hostport.Mapping{ContainerPort: p.ContainerPort, Protocol: p.Protocol, HostPort: uint16(40017 + i)})
		}
		return inst, nil
	}})
	rec := ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"p","image":"nginx","ports":[{"container_port":22},{"container_port":53,"protocol":"udp"}]}`)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if want := []hostport.PortRequest{{ContainerPort: 22, Protocol: "tcp"}, {ContainerPort: 53, Protocol: "udp"}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("spec ports %+v, want %+v", got, want)
	}
	if !strings.Contains(rec.Body.String(), `"ports":[{"container_port":22,"protocol":"tcp","host_port":40017},{"container_port":53,"protocol":"udp","host_port":40018}]`) {
		t.Fatalf("answer lacks the mapping: %s", rec.Body)
	}
	for _, body := range []string{
		`{"instance_id":"p","image":"nginx","ports":[{"container_port":22},{"container_port":22,"protocol":"tcp"}]}`,
		`{"instance_id":"p","image":"nginx","ports":[{"container_port":0}]}`,
		`{"instance_id":"p","image":"nginx","ports":[{"container_port":22,"protocol":"sctp"}]}`,
	} {
		got = nil
		rec := ts.do(t, http.MethodPost, "/start_instance", body)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"field":"ports`) || got != nil {
			t.Fatalf("%s: status %d: %s", body, rec.Code, rec.Body)
		}
	}
}

// A host port range with too few free ports is a 409 naming ports.
func TestStartWithPortsRangeExhausted(t *testing.T) {
	t.Parallel()
	alloc := hostport.NewAllocator(hostport.Range{First: 40000, Last: 40000}, func(string, uint16) bool { return false })
	ts := newTestServer(t, &fakeRuntime{start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
		if _, err := alloc.Reserve(spec.ID, spec.Ports); err != nil {
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepAllocate, Err: err}
		}
		return running(spec), nil
	}})
	rec := ts.do(t, http.MethodPost, "/start_instance", `{"instance_id":"p","image":"nginx","ports":[{"container_port":22},{"container_port":80}]}`)
	if rec.Code != http.StatusConflict || !strings.Contains(rec.Body.String(), `"field":"ports"`) || !strings.Contains(rec.Body.String(), "exhausted") {
		t.Fatalf("status %d: %s; want 409 naming ports", rec.Code, rec.Body)
	}
}
