package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/internal/testenv"
)

// The lazy-pull phase runs end to end on a small image: both sides start
// and print, and the table reads. The numbers are not judged.
func TestBenchLazySmoke(t *testing.T) {
	testenv.Require(t, "containerd", "containerd-shim-runc-v2", "runc")
	if _, err := testenv.StargzBinary(); err != nil {
		testenv.Unavailable(t, err.Error())
	}
	res, err := runLazy(context.Background(), lazyConfig{Rounds: 1, MB: 8, Layers: 2, RateMB: 0})
	if err != nil {
		t.Fatal(err)
	}
	if res.Lazy.N != 1 || res.Full.N != 1 || res.Lazy.Median <= 0 || res.Full.Median <= 0 || res.Speedup <= 0 {
		t.Errorf("results %+v", res)
	}
	if res.FullServed < 8<<20 || res.LazyServed <= 0 {
		t.Errorf("served: lazy %d, full %d bytes of a %d-byte image", res.LazyServed, res.FullServed, res.ImageBytes)
	}
	var table bytes.Buffer
	res.print(&table)
	if !strings.Contains(table.String(), "full / lazy") {
		t.Errorf("table:\n%s", table.String())
	}
}
