package hostport

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
)

func noneBound(string, uint16) bool { return false }

func TestParseRange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want Range
		ok   bool
	}{
		{"40000-40999", Range{40000, 40999}, true},
		{" 1 - 1 ", Range{1, 1}, true},
		{"40999-40000", Range{}, false},
		{"0-10", Range{}, false},
		{"1-65536", Range{}, false},
		{"40000", Range{}, false},
		{"a-b", Range{}, false},
	} {
		got, err := ParseRange(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseRange(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestNormalize(t *testing.T) {
	t.Parallel()
	many := make([]PortRequest, MaxPorts+1)
	for i := range many {
		many[i] = PortRequest{ContainerPort: uint16(i + 1)}
	}
	for _, tc := range []struct {
		name string
		in   []PortRequest
		ok   bool
	}{
		{"tcp default", []PortRequest{{ContainerPort: 22}}, true},
		{"tcp and udp same port", []PortRequest{{ContainerPort: 53}, {ContainerPort: 53, Protocol: UDP}}, true},
		{"duplicate", []PortRequest{{ContainerPort: 22}, {ContainerPort: 22, Protocol: TCP}}, false},
		{"port 0", []PortRequest{{ContainerPort: 0}}, false},
		{"sctp", []PortRequest{{ContainerPort: 22, Protocol: "sctp"}}, false},
		{"too many", many, false},
		{"64", many[:MaxPorts], true},
	} {
		got, err := Normalize(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
			continue
		}
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.ErrorField() != "ports" || !errdefs.IsInvalidArgument(err) {
				t.Errorf("%s: %v is not an InvalidArgument naming ports", tc.name, err)
			}
			continue
		}
		if got[0].Protocol != TCP && tc.in[0].Protocol == "" {
			t.Errorf("%s: protocol not defaulted to tcp: %+v", tc.name, got)
		}
	}
}

func TestReserveNeverHandsAPortTwice(t *testing.T) {
	t.Parallel()
	a := NewAllocator(Range{50000, 50099}, noneBound)
	var mu sync.Mutex
	seen := map[uint16]string{}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("i%d", i)
			m, err := a.Reserve(id, []PortRequest{{ContainerPort: 22}, {ContainerPort: 53, Protocol: UDP}})
			if err != nil {
				t.Errorf("reserve %s: %v", id, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, p := range m {
				if other, ok := seen[p.HostPort]; ok {
					t.Errorf("host port %d handed to %s and %s", p.HostPort, other, id)
				}
				seen[p.HostPort] = id
			}
		}()
	}
	wg.Wait()
	if a.Free() != 0 {
		t.Errorf("Free = %d after handing out the whole range", a.Free())
	}
	_, err := a.Reserve("one-more", []PortRequest{{ContainerPort: 22}})
	if !errors.Is(err, ErrExhausted) || !errdefs.IsConflict(err) {
		t.Fatalf("reserve on a full range: %v, want a Conflict wrapping ErrExhausted", err)
	}
	var pe *Error
	if !errors.As(err, &pe) || pe.ErrorField() != "ports" {
		t.Fatalf("exhausted error %v does not name the ports field", err)
	}
}

func TestReserveIsIdempotentPerID(t *testing.T) {
	t.Parallel()
	a := NewAllocator(Range{50000, 50009}, noneBound)
	req := []PortRequest{{ContainerPort: 22}, {ContainerPort: 8888}}
	first, err := a.Reserve("x", req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.Reserve("x", req)
	if err != nil || !slices.Equal(first, again) {
		t.Fatalf("repeated reserve = %v, %v; want %v", again, err, first)
	}
	if _, err := a.Reserve("x", []PortRequest{{ContainerPort: 80}}); !errdefs.IsConflict(err) {
		t.Fatalf("reserve with other ports for the same ID: %v, want Conflict", err)
	}
	if a.Free() != 8 {
		t.Fatalf("Free = %d, want 8", a.Free())
	}
}

func TestReleasedPortIsNotReusedAtOnce(t *testing.T) {
	t.Parallel()
	a := NewAllocator(Range{50000, 50002}, noneBound)
	m1, _ := a.Reserve("a", []PortRequest{{ContainerPort: 22}})
	a.Release("a")
	m2, _ := a.Reserve("b", []PortRequest{{ContainerPort: 22}})
	if m1[0].HostPort == m2[0].HostPort {
		t.Fatalf("port %d reused right after release", m1[0].HostPort)
	}
	if len(a.Release("nobody")) != 0 {
		t.Fatal("release of an unknown ID returned ports")
	}
}

func TestRestoreKeepsPortsFromBeingHandedOut(t *testing.T) {
	t.Parallel()
	a := NewAllocator(Range{50000, 50002}, noneBound)
	restored := []Mapping{{ContainerPort: 22, Protocol: TCP, HostPort: 50000}, {ContainerPort: 80, Protocol: TCP, HostPort: 50002}}
	if err := a.Restore("old", restored); err != nil {
		t.Fatal(err)
	}
	if err := a.Restore("old", restored); err != nil {
		t.Fatalf("restoring the same mappings twice: %v", err)
	}
	m, err := a.Reserve("new", []PortRequest{{ContainerPort: 22}})
	if err != nil || m[0].HostPort != 50001 {
		t.Fatalf("reserve after restore = %v, %v; want host port 50001", m, err)
	}
	if _, err := a.Reserve("third", []PortRequest{{ContainerPort: 22}}); !errors.Is(err, ErrExhausted) {
		t.Fatalf("want exhausted, got %v", err)
	}
	if err := a.Restore("other", []Mapping{{ContainerPort: 1, Protocol: TCP, HostPort: 50000}}); !errdefs.IsConflict(err) {
		t.Fatalf("restoring a port recorded for another instance: %v, want Conflict", err)
	}
	if got := a.Holders(); len(got) != 2 || !slices.Equal(got["old"], restored) {
		t.Fatalf("Holders = %v", got)
	}
}

// A port some other process listens on (a real socket here) is skipped,
// and a range whose only port is bound is exhausted.
func TestBoundPortIsSkipped(t *testing.T) {
	t.Parallel()
	var l net.Listener
	var port uint16
	for {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = uint16(l.Addr().(*net.TCPAddr).Port)
		if port < 65000 {
			break
		}
		l.Close()
	}
	defer l.Close()
	if !Bound(TCP, port) {
		t.Fatalf("Bound(tcp, %d) = false with a listener on 127.0.0.1:%d", port, port)
	}
	var free uint16
	for p := port + 1; p < port+50; p++ {
		if !Bound(TCP, p) {
			free = p
			break
		}
	}
	if free == 0 {
		t.Skip("no free port near the listener")
	}
	a := NewAllocator(Range{port, free}, nil)
	m, err := a.Reserve("x", []PortRequest{{ContainerPort: 22}})
	if err != nil {
		t.Fatal(err)
	}
	if m[0].HostPort == port {
		t.Fatalf("handed out port %d that a listener holds", port)
	}
	only := NewAllocator(Range{port, port}, nil)
	if _, err := only.Reserve("y", []PortRequest{{ContainerPort: 22}}); !errors.Is(err, ErrExhausted) || !errdefs.IsConflict(err) {
		t.Fatalf("range of one bound port: %v, want exhausted Conflict", err)
	}
	// The same port is free for UDP, where nothing is bound.
	if Bound(UDP, port) {
		t.Logf("udp %d bound by someone else as well", port)
	}
}

func TestFormatParse(t *testing.T) {
	t.Parallel()
	m := []Mapping{{22, TCP, 40017}, {8888, UDP, 40018}}
	s := Format(m)
	if s != "tcp/22:40017,udp/8888:40018" {
		t.Fatalf("Format = %q", s)
	}
	back, err := Parse(s)
	if err != nil || !slices.Equal(back, m) {
		t.Fatalf("Parse(%q) = %v, %v", s, back, err)
	}
	if m, err := Parse(""); err != nil || m != nil {
		t.Fatalf("Parse(\"\") = %v, %v", m, err)
	}
	for _, bad := range []string{"tcp/22", "sctp/1:2", "tcp/0:1", "tcp/1:70000", "tcp/x:1"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	env := Env(m, "203.0.113.7")
	want := []string{"HOST_PORT_TCP_22=40017", "HOST_PORT_UDP_8888=40018", "PUBLIC_IP=203.0.113.7"}
	if !slices.Equal(env, want) {
		t.Fatalf("Env = %v, want %v", env, want)
	}
}
