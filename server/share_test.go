package server

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
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

// A failed pull names what happened in code.
func TestPullFailureNamesItsKind(t *testing.T) {
	t.Parallel()
	for kind, wantStatus := range map[string]int{
		runtime.PullStalled:  http.StatusBadGateway,
		runtime.PullNotFound: http.StatusBadRequest,
	} {
		cause := errors.New("pull x: " + kind)
		if kind == runtime.PullNotFound {
			cause = fmt.Errorf("pull x: %w", errdefs.ErrNotFound)
		}
		err := &runtime.StepError{Step: runtime.StepPull, Err: &runtime.PullError{Kind: kind, Err: cause}}
		status, body := classify(err)
		if status != wantStatus || body.Code != kind || body.Step != runtime.StepPull {
			t.Errorf("%s: %d %+v", kind, status, body)
		}
	}
}

// A start refused for want of disk space is a 409 naming disk.
func TestDiskBelowReserveIsConflictOnDisk(t *testing.T) {
	t.Parallel()
	err := &runtime.StepError{Step: runtime.StepAllocate, Err: &disk.FullError{Msg: "the host's disk has 1 MiB free"}}
	if status, body := classify(err); status != http.StatusConflict || body.Field != "disk" {
		t.Errorf("classify = %d %+v", status, body)
	}
}
