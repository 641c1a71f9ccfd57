package containerd

import (
	"os"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
)

// Following streams what the instance writes after the request, ends when
// it exits, and resumes from an offset without a gap.
func TestFollowLogsStreamsUntilExit(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	r := newRuntime(t, daemon.Address, testNamespace(t), conformance.NewRecorder())
	if _, err := r.Start(ctx(t), payloadSpec("chatty", "echo", "early", "sleep", "5", "echo", "late-1", "sleep", "1", "echo", "late-2", "exit", "0")); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, r, "chatty", "early")
	from, err := r.LogOffset(ctx(t), "chatty")
	if err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	flushes := 0
	next, truncated, err := r.FollowLogs(ctx(t), "chatty", from, 0, 0, &out, func() { flushes++ })
	if err != nil || truncated {
		t.Fatalf("FollowLogs: next %d truncated %v err %v", next, truncated, err)
	}
	got := out.String()
	if strings.Contains(got, "early") || !strings.Contains(got, "late-1\n") || !strings.HasSuffix(got, "late-2\n") {
		t.Errorf("followed %q", got)
	}
	whole, err := os.ReadFile(r.logPath("chatty"))
	if err != nil {
		t.Fatal(err)
	}
	if next != int64(len(whole)) || string(whole[from:]) != got || flushes == 0 {
		t.Errorf("next %d of %d, flushes %d", next, len(whole), flushes)
	}
	inst, err := r.Get(ctx(t), "chatty")
	if err != nil || inst.Status != runtime.StatusExited {
		t.Errorf("the stream ended before the exit: %+v %v", inst, err)
	}

	// From the start, capped: it stops at the cap and says where to go on.
	var first lockedBuffer
	next, truncated, err = r.FollowLogs(ctx(t), "chatty", 0, 0, 4, &first, func() {})
	if err != nil || !truncated || next != 4 || first.String() != "earl" {
		t.Errorf("capped: %q next %d truncated %v err %v", first.String(), next, truncated, err)
	}
	var rest lockedBuffer
	if _, _, err := r.FollowLogs(ctx(t), "chatty", next, 0, 0, &rest, func() {}); err != nil || first.String()+rest.String() != string(whole) {
		t.Errorf("resumed: %q %v", rest.String(), err)
	}
	// tail without an offset: the last line, then the end.
	var tail lockedBuffer
	if _, _, err := r.FollowLogs(ctx(t), "chatty", -1, 1, 0, &tail, func() {}); err != nil || tail.String() != "late-2\n" {
		t.Errorf("tail 1: %q %v", tail.String(), err)
	}
}
