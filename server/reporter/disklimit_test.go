package reporter

import (
	"context"
	"testing"

	"github.com/host-agent/host-agent/runtime"
)

// The host report says how disk limits are enforced, and a heartbeat
// carries an instance's disk limit and why it exited.
func TestReportsDiskLimits(t *testing.T) {
	t.Parallel()
	code := 137
	stopped := runtime.Instance{ID: "full", ContainerID: "full", Status: runtime.StatusExited, ExitCode: &code,
		ExitReason:  runtime.ExitReasonDiskLimit,
		AgentLabels: map[string]string{runtime.LabelDiskLimitBytes: "1073741824"}}
	h := newHarness(t, nil, stopped)
	opts := h.options()
	want := DiskLimitInfo{Mode: "watched", Why: "ext4", AllocatedBytes: 1 << 30}
	opts.DiskLimit = func() *DiskLimitInfo { w := want; return &w }
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	rep, _ := r.Collect(context.Background())
	if rep.DiskLimit == nil || *rep.DiskLimit != want {
		t.Errorf("host report disk_limit = %+v, want %+v", rep.DiskLimit, want)
	}
	h.run(opts, h.heartbeatsAtLeast(1))
	hbs := h.server.ofKind("heartbeat")
	if len(hbs) == 0 {
		t.Fatal("no heartbeat")
	}
	insts := hbs[0].heartbeat(t).Instances
	if len(insts) != 1 || insts[0].Reason != runtime.ExitReasonDiskLimit || insts[0].DiskLimitBytes != 1<<30 {
		t.Errorf("heartbeat instances = %+v, want full with reason disk_limit and its limit", insts)
	}
}
