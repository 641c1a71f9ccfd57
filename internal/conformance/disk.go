package conformance

import (
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/disk"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// diskTestLimit is the default disk limit in the disk scenario: small, so
// that the test writes little.
const diskTestLimit = 8 << 20

// openWithDiskLimits builds an Agent whose starts get disk limits (default
// diskTestLimit, recorded in labels) and a Watcher over it, as
// cmd/host-agent builds them. The Watcher is driven by the test.
func openWithDiskLimits(t *testing.T, sc Scope) (*Agent, *disk.Watcher) {
	t.Helper()
	rec := NewRecorder()
	be := sc.Open(t, rec, nil)
	meter, ok := be.(runtime.DiskMeter)
	if !ok {
		t.Fatalf("back end %T does not measure writable layers (runtime.DiskMeter)", be)
	}
	stopper, ok := be.(runtime.ReasonStopper)
	if !ok {
		t.Fatalf("back end %T cannot stop with a reason (runtime.ReasonStopper)", be)
	}
	limits := &disk.Limits{Path: os.TempDir(), Default: diskTestLimit, Used: meter.DiskUsed}
	l := lifecycle.New(be, lifecycle.Options{
		Kinds: []runtime.Admission{limits}, Events: rec,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	t.Cleanup(func() { l.Close() })
	if err := l.Restore(Ctx(t)); err != nil {
		t.Fatal(err)
	}
	w := &disk.Watcher{Instances: l, Meter: meter, Stopper: stopper, Interval: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return &Agent{Lifecycle: l, Events: rec}, w
}

// testDiskLimitWatched: a rental writing past its disk limit is stopped by
// the watcher at the first or second check after it crossed it (within
// twice the watch interval), and its exit, its state (also after an agent
// restart) say "disk_limit"; a rental under its limit runs on. The limit,
// a default here, is recorded on the instance.
func testDiskLimitWatched(t *testing.T, h Harness) {
	sc := h.NewScope(t)
	a, w := openWithDiskLimits(t, sc)
	hog, fine := uniqueID(t, "hog"), uniqueID(t, "fine")
	if _, err := a.Start(Ctx(t), spec(h, hog, "fill", "/hog.bin", "24", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Start(Ctx(t), spec(h, fine, "fill", "/fine.bin", "2", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{hog, fine} {
		inst, err := a.Get(Ctx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if inst.DiskLimit() != diskTestLimit {
			t.Fatalf("%s: disk limit %d recorded, want the default %d", id, inst.DiskLimit(), diskTestLimit)
		}
	}
	waitLogs(t, a, hog, "fill /hog.bin: wrote 24 MiB")
	waitLogs(t, a, fine, "fill /fine.bin: wrote 2 MiB")
	used, err := w.Meter.DiskUsed(Ctx(t), fine)
	if err != nil {
		t.Fatal(err)
	}
	if used < 2<<20 || used >= diskTestLimit {
		t.Fatalf("%s wrote 2 MiB; its writable layer measures %d bytes", fine, used)
	}
	var stopped []string
	for check := 1; check <= 2 && !slices.Contains(stopped, hog); check++ {
		stopped = append(stopped, w.Check(Ctx(t))...)
	}
	if !slices.Equal(stopped, []string{hog}) {
		t.Fatalf("two checks after %s wrote 24 MiB over an 8 MiB limit stopped %v", hog, stopped)
	}
	ev := a.Events.WaitFor(t, hog, events.TypeInstanceExited, time.Minute)
	if ev.Reason != runtime.ExitReasonDiskLimit {
		t.Errorf("exit event %+v, want reason %q", ev, runtime.ExitReasonDiskLimit)
	}
	inst, err := a.Get(Ctx(t), hog)
	if err != nil || inst.Status != runtime.StatusExited || inst.ExitReason != runtime.ExitReasonDiskLimit {
		t.Errorf("get %s after the stop: %+v %v, want exited with reason %q", hog, inst, err, runtime.ExitReasonDiskLimit)
	}
	// The reason survives the agent's restart.
	a.Close()
	b, _ := openWithDiskLimits(t, sc)
	if inst, err := b.Get(Ctx(t), hog); err != nil || inst.ExitReason != runtime.ExitReasonDiskLimit {
		t.Errorf("get %s after an agent restart: %+v %v, want reason %q", hog, inst, err, runtime.ExitReasonDiskLimit)
	}
	if inst, err := b.Get(Ctx(t), fine); err != nil || inst.Status != runtime.StatusRunning || inst.ExitReason != "" {
		t.Errorf("%s under its limit: %+v %v, want running", fine, inst, err)
	}
	for _, id := range []string{hog, fine} {
		if err := b.Terminate(Ctx(t), id, time.Second); err != nil {
			t.Fatal(err)
		}
	}
}
