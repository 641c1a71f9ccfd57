package volume

import (
	"context"
	"errors"
	"testing"

	"github.com/containerd/errdefs"
)

// A volume must fit beside what rentals sharing its disk were promised and
// have not written; what the volumes promise is told back.
func TestAdmitLeavesWhatRentalsPromised(t *testing.T) {
	var promised int64
	s, err := Open(context.Background(), Options{Dir: t.TempDir(), Promised: func() int64 { return promised }})
	if err != nil {
		t.Fatal(err)
	}
	free, err := freeBytes(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.admit(gib); err != nil {
		t.Fatalf("1 GiB with nothing promised to rentals: %v", err)
	}
	promised = free
	if err := s.admit(gib); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("1 GiB with every free byte promised to rentals: %v, want ResourceExhausted", err)
	}
	s.vols["ds"] = meta{Name: "ds", SizeGB: 3}
	if got := s.promisedLocked(); got != 3*gib {
		t.Errorf("promised = %d, want 3 GiB for an empty 3 GiB volume", got)
	}
}
