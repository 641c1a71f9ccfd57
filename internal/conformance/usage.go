package conformance

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/usage"
)

// testUsage: a rental that keeps a CPU busy and sends 10 MiB to a peer is
// metered at 10 to 11 MiB sent (its own interface, headers included) and
// CPU time that grows; a Meter opened again on the same directory (the
// agent's restart) answers figures that never went back.
func testUsage(t *testing.T, h Harness) {
	sc := h.NewScope(t)
	nw, ok := sc.(Networker)
	if !ok {
		t.Fatalf("%s: the scope cannot put rentals on a network", h.Name)
	}
	testenv.LockHostNetwork(t)
	peer := testenv.AddPeer(t, "usage", "203.0.113.45", "203.0.113.46", 30)
	testenv.MustRouteInto(t, peer.Addr, peer.HostIf)
	rec := NewRecorder()
	be, _ := nw.OpenNetworked(t, rec, network.DefaultBlockedEgress, peer.Host)
	sampler, ok := be.(usage.Sampler)
	if !ok {
		t.Fatalf("%s: the back end reads no usage (usage.Sampler)", h.Name)
	}
	l := lifecycle.New(be, lifecycle.Options{
		Events: rec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	t.Cleanup(func() { l.Close() })
	port, got := testenv.SinkIn(t, peer.NS, peer.Addr.String()+":0")
	target := fmt.Sprintf("%s:%d", peer.Addr, port)
	dir := filepath.Join(t.TempDir(), "usage")
	meter, err := usage.NewMeter(usage.Options{Dir: dir, Sampler: sampler})
	if err != nil {
		t.Fatal(err)
	}

	const sent = 10 << 20
	s := spec(h, uniqueID(t, "usage"), "spin", "send", target, fmt.Sprint(sent), "echo", "END", "sleep", "inf")
	inst, err := l.Start(Ctx(t), s)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	logs := waitLogs(t, &Agent{Lifecycle: l}, inst.ID, "END")
	if !strings.Contains(logs, fmt.Sprintf("send %s: %d bytes", target, sent)) {
		t.Fatalf("the rental did not send: %s", logs)
	}
	select {
	case r := <-got:
		if r.Bytes != sent {
			t.Fatalf("the peer received %d bytes, want %d", r.Bytes, sent)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the peer received nothing")
	}
	first := meter.Observe(Ctx(t), inst)
	t.Logf("usage: %+v", first)
	if first.NetTxBytes < sent || first.NetTxBytes > 11<<20 {
		t.Errorf("net_tx_bytes %d after sending %d bytes, want 10-11 MiB", first.NetTxBytes, sent)
	}
	if first.NetRxBytes == 0 || first.NetRxBytes > 1<<20 {
		t.Errorf("net_rx_bytes %d: want the peer's acknowledgements, well under 1 MiB", first.NetRxBytes)
	}
	if first.CPUSeconds <= 0 || first.MemoryMaxBytes == 0 {
		t.Errorf("no CPU time or memory metered: %+v", first)
	}
	time.Sleep(2 * time.Second)
	second := meter.Observe(Ctx(t), inst)
	if second.CPUSeconds <= first.CPUSeconds {
		t.Errorf("a busy loop's CPU seconds did not grow: %g, then %g", first.CPUSeconds, second.CPUSeconds)
	}

	// The agent's restart: a new Meter on the same directory.
	again, err := usage.NewMeter(usage.Options{Dir: dir, Sampler: sampler})
	if err != nil {
		t.Fatal(err)
	}
	if kept, ok := again.Last(inst.ID); !ok || kept != second {
		t.Errorf("after a restart the Meter kept %+v (%v), want %+v", kept, ok, second)
	}
	third := again.Observe(Ctx(t), inst)
	if third.CPUSeconds < second.CPUSeconds || third.NetTxBytes < second.NetTxBytes || third.NetRxBytes < second.NetRxBytes ||
		third.MemoryMaxBytes < second.MemoryMaxBytes {
		t.Errorf("usage went back across a restart: %+v, then %+v", second, third)
	}
	if err := l.Terminate(Ctx(t), inst.ID, time.Second); err != nil {
		t.Fatal(err)
	}
}
