package gpu

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/host-agent/host-agent/gpu/gpumock"
)

// TestFaultsOutliveRestart records a fault on a held GPU with the health
// file set, then opens a second inventory on the same file, as a restarted
// agent does: the holder's fault is still there until it releases the GPU.
func TestFaultsOutliveRestart(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), HealthFileName)
	machine, err := gpumock.New(gpumock.DGXH100)
	if err != nil {
		t.Fatal(err)
	}
	inv, a := open(t, machine)
	if err := inv.RememberHealth(path); err != nil {
		t.Fatal(err)
	}
	held, err := a.Reserve("r1", Request{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inv.WatchHealth(ctx, rec) }()
	machine.InjectDoubleBitECC(held[0].Index)
	for inv.Faults("r1") == nil {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	inv.Close()

	again, err := gpumock.New(gpumock.DGXH100)
	if err != nil {
		t.Fatal(err)
	}
	inv2, a2 := open(t, again)
	if err := inv2.RememberHealth(path); err != nil {
		t.Fatal(err)
	}
	if err := a2.Restore("r1", []string{held[0].UUID}); err != nil {
		t.Fatal(err)
	}
	f := inv2.Faults("r1")
	if len(f) != 1 || f[0].Kind != FaultECC || !f[0].Benched || f[0].GPU != held[0].UUID {
		t.Fatalf("faults after restart = %+v", f)
	}
	a2.Release("r1")
	inv3, _ := open(t, machine)
	if err := inv3.RememberHealth(path); err != nil {
		t.Fatal(err)
	}
	if f := inv3.Faults("r1"); f != nil {
		t.Errorf("faults after release and restart = %+v", f)
	}
}
