package server

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/host-agent/host-agent/runtime"
)

// A real-time priority is refused with 400 naming ulimits.rtprio, and the
// runtime is never asked to start anything.
func TestStartRefusesRealTimePriority(t *testing.T) {
	t.Parallel()
	var starts atomic.Int64
	rt := &fakeRuntime{start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
		starts.Add(1)
		return running(spec), nil
	}}
	ts := newTestServer(t, rt)
	for _, v := range []string{"1", "99", "-1"} {
		rec := ts.do(t, http.MethodPost, "/start_instance", obj(`"ulimits":{"nofile":1024,"rtprio":`+v+`}`))
		if rec.Code != http.StatusBadRequest {
			t.Fatalf("rtprio %s: %d %s", v, rec.Code, rec.Body)
		}
		if body := errorBody(t, rec); body.Field != "ulimits.rtprio" || !strings.Contains(body.Error, "real-time") {
			t.Errorf("rtprio %s: field %q, error %q", v, body.Field, body.Error)
		}
	}
	if n := starts.Load(); n != 0 {
		t.Fatalf("the runtime was asked to start %d times", n)
	}
	if rec := ts.do(t, http.MethodPost, "/start_instance", obj(`"ulimits":{"rtprio":0,"nice":0,"rttime":-1}`)); rec.Code != http.StatusOK {
		t.Fatalf("rtprio 0: %d %s", rec.Code, rec.Body)
	}
}

// A limit the runtime cannot grant is a 409 naming the limit and the
// host's ceiling, never a 500.
func TestStartUlimitAboveCeilingIsConflict(t *testing.T) {
	t.Parallel()
	for name, err := range map[string]error{
		"refused up front": &runtime.StepError{Step: runtime.StepCreate, Err: &runtime.UlimitError{Name: "nofile", Value: 65000, Ceiling: 20000}},
		"refused by runc": &runtime.StepError{Step: runtime.StepStart, Err: runtime.RlimitRefused(
			textErr("runc create failed: unable to start container process: error during container init: error setting rlimit type 7: operation not permitted"))},
	} {
		rt := &fakeRuntime{start: func(context.Context, runtime.InstanceSpec) (runtime.Instance, error) {
			return runtime.Instance{}, err
		}}
		ts := newTestServer(t, rt)
		rec := ts.do(t, http.MethodPost, "/start_instance", obj(`"ulimits":{"nofile":65000}`))
		if rec.Code != http.StatusConflict {
			t.Fatalf("%s: %d %s", name, rec.Code, rec.Body)
		}
		body := errorBody(t, rec)
		if body.Field != "ulimits.nofile" {
			t.Errorf("%s: field %q (%s)", name, body.Field, body.Error)
		}
		if name == "refused up front" && !strings.Contains(body.Error, strconv.Itoa(20000)) {
			t.Errorf("%s: the error does not name the ceiling: %q", name, body.Error)
		}
	}
}

type textErr string

func (e textErr) Error() string { return string(e) }
