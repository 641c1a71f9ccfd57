package server

import (
	"net/http"
	"testing"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/share"
)

// A start whose memory does not fit is a 409 naming the resources field.
func TestOversubscriptionIsConflictOnResources(t *testing.T) {
	t.Parallel()
	err := &runtime.StepError{Step: runtime.StepAllocate, Err: &share.AdmissionError{Field: "resources", Msg: "memory of 9000 MiB does not fit"}}
	status, body := classify(err)
	if status != http.StatusConflict || body.Field != "resources" || body.Step != runtime.StepAllocate {
		t.Errorf("classify = %d %+v", status, body)
	}
}
