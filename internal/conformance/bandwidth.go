package conformance

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	"github.com/host-agent/host-agent/runtime/network"
)

// blastSeconds is how long a rental sends as fast as it can.
const blastSeconds = 5

// testBandwidth: a rental with egress_mbps 50 sending to a peer as fast as
// it can for 5 s is measured by the peer at 50 Mbit/s within 15%, one with
// ingress_mbps 50 reading from a peer sending as fast as it can measures
// the same; a rental without a limit is not held to it. The limit is recorded in the labels,
// and applied again when a restarted agent finds it gone.
func testBandwidth(t *testing.T, h Harness) {
	sc := h.NewScope(t)
	nw, ok := sc.(Networker)
	if !ok {
		t.Fatalf("%s: the scope cannot put rentals on a network", h.Name)
	}
	testenv.LockHostNetwork(t)
	peer := testenv.AddPeer(t, "sink", "203.0.113.41", "203.0.113.42", 30)
	testenv.MustRouteInto(t, peer.Addr, peer.HostIf)
	rec := NewRecorder()
	be, _ := nw.OpenNetworked(t, rec, network.DefaultBlockedEgress, peer.Host)
	l := lifecycle.New(be, lifecycle.Options{
		Events: rec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	t.Cleanup(func() { l.Close() })
	port, got := testenv.SinkIn(t, peer.NS, peer.Addr.String()+":0")
	target := fmt.Sprintf("%s:%d", peer.Addr, port)

	blast := func(name string, egress int64) (runtime.Instance, testenv.Received) {
		t.Helper()
		// A second's wait: on Docker the limits are applied just after
		// the start, as the veth only exists then.
		s := spec(h, uniqueID(t, name), "sleep", "1", "blast", target, fmt.Sprint(blastSeconds), "echo", "END", "sleep", "inf")
		s.Resources.EgressMbps = egress
		inst, err := l.Start(Ctx(t), s)
		if err != nil {
			t.Fatalf("start %s: %v", s.ID, err)
		}
		logs := waitLogs(t, &Agent{Lifecycle: l}, inst.ID, "END")
		if !strings.Contains(logs, "blast "+target+": ") || strings.Contains(logs, "error") {
			t.Fatalf("%s did not send: %s", s.ID, logs)
		}
		var r testenv.Received
		select {
		case r = <-got:
		case <-time.After(30 * time.Second):
			t.Fatalf("the peer received nothing from %s: %s", s.ID, logs)
		}
		if r.Bytes <= 0 {
			t.Fatalf("the peer's connection from %s was cut: %+v", s.ID, r)
		}
		inst, err = l.Get(Ctx(t), inst.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Terminate(Ctx(t), inst.ID, time.Second); err != nil {
			t.Fatal(err)
		}
		return inst, r
	}

	limited, r := blast("bw-50", 50)
	t.Logf("egress_mbps 50: %d bytes in %s: %.1f Mbit/s", r.Bytes, r.Last.Sub(r.First), r.Mbps())
	if m := r.Mbps(); m < 42 || m > 58 {
		t.Errorf("a rental limited to 50 Mbit/s sent %.1f Mbit/s, want 42-58", m)
	}
	if lbl := limited.AgentLabels[runtime.LabelBandwidth]; lbl != "egress=50" {
		t.Errorf("label %s = %q, want egress=50", runtime.LabelBandwidth, lbl)
	}
	// Ingress: the rental reads what the peer sends as fast as it can.
	srcPort := testenv.SourceIn(t, peer.NS, peer.Addr.String()+":0")
	source := fmt.Sprintf("%s:%d", peer.Addr, srcPort)
	s := spec(h, uniqueID(t, "bw-in"), "sleep", "1", "recv", source, fmt.Sprint(blastSeconds), "echo", "END", "sleep", "inf")
	s.Resources.IngressMbps = 50
	in, err := l.Start(Ctx(t), s)
	if err != nil {
		t.Fatalf("start %s: %v", s.ID, err)
	}
	logs := waitLogs(t, &Agent{Lifecycle: l}, in.ID, "END")
	var n, ms int64
	if _, err := fmt.Sscanf(logs[strings.Index(logs, "recv "+source+": ")+len("recv "+source+": "):], "%d bytes in %d ms", &n, &ms); err != nil || ms <= 0 {
		t.Fatalf("%s did not receive: %s", s.ID, logs)
	}
	inMbps := float64(n) * 8 / (float64(ms) / 1000) / 1e6
	t.Logf("ingress_mbps 50: %d bytes in %d ms: %.1f Mbit/s", n, ms, inMbps)
	if inMbps < 42 || inMbps > 58 {
		t.Errorf("a rental limited to 50 Mbit/s in received %.1f Mbit/s, want 42-58", inMbps)
	}
	if err := l.Terminate(Ctx(t), in.ID, time.Second); err != nil {
		t.Fatal(err)
	}

	free, r := blast("bw-free", 0)
	t.Logf("unlimited: %d bytes in %s: %.1f Mbit/s", r.Bytes, r.Last.Sub(r.First), r.Mbps())
	if m := r.Mbps(); m < 116 {
		t.Errorf("a rental without a limit sent %.1f Mbit/s, want more than twice 58", m)
	}
	if lbl := free.AgentLabels[runtime.LabelBandwidth]; lbl != "" {
		t.Errorf("label %s = %q on a rental without limits", runtime.LabelBandwidth, lbl)
	}
}
