// Package hostport hands out the host ports that publish rentals' container
// ports. It is the reservation kind for ports: the lifecycle layer reserves
// an instance's ports before anything is created, records them in the
// container's labels, releases them after the container is gone, and
// restores them from labels when the agent starts. A host port is never held
// by two instances, and a port some other process on the host has bound is
// skipped.
//
// Only the lifecycle layer (and the network package, for the mapping type)
// imports it.
package hostport

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
)

// Protocols a port can be published with.
const (
	TCP = "tcp"
	UDP = "udp"
)

// MaxPorts is how many ports one instance may publish.
const MaxPorts = 64

// Field is the request field that port errors are about.
const Field = "ports"

// PortRequest asks for a container port to be published.
type PortRequest struct {
	ContainerPort uint16
	// Protocol is TCP or UDP; empty means TCP.
	Protocol string
}

// Mapping is a published port: HostPort on the host's addresses forwards to
// ContainerPort inside the instance.
type Mapping struct {
	ContainerPort uint16 `json:"container_port"`
	Protocol      string `json:"protocol"`
	HostPort      uint16 `json:"host_port"`
}

// Range is an inclusive range of host ports.
type Range struct {
	First, Last uint16
}

// Size is the number of ports in r.
func (r Range) Size() int { return int(r.Last) - int(r.First) + 1 }

// Contains says whether p is in r.
func (r Range) Contains(p uint16) bool { return p >= r.First && p <= r.Last }

func (r Range) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// DefaultRange is HOST_PORT_RANGE's default: above the ports services
// usually take, below Linux's ephemeral range (32768-60999 starts lower, but
// 40000-40999 is rarely listened on).
var DefaultRange = Range{First: 40000, Last: 40999}

// ParseRange reads "FIRST-LAST".
func ParseRange(s string) (Range, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return Range{}, fmt.Errorf("want FIRST-LAST, such as 40000-40999, got %q", s)
	}
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if err1 != nil || err2 != nil || first == 0 || first > last {
		return Range{}, fmt.Errorf("want FIRST-LAST with 1 <= FIRST <= LAST <= 65535, got %q", s)
	}
	return Range{First: uint16(first), Last: uint16(last)}, nil
}

// Error is a port error a caller can act on. It names the request field and
// unwraps to an errdefs kind (InvalidArgument or Conflict).
type Error struct {
	Msg  string
	Kind error
}

func (e *Error) Error() string { return e.Msg }

// Unwrap gives the errdefs kind.
func (e *Error) Unwrap() error { return e.Kind }

// ErrorField names the request field at fault.
func (e *Error) ErrorField() string { return Field }

// ErrExhausted is the kind of error Reserve returns when the range has too
// few free ports; errors.Is finds it, and it is an errdefs.Conflict.
var ErrExhausted = errors.New("host port range exhausted")

func conflict(format string, args ...any) error {
	return &Error{Msg: fmt.Sprintf(format, args...), Kind: errdefs.ErrConflict}
}

// Normalize checks requests and spells them canonically (protocol filled
// in), in the order given. Duplicates (same container port and protocol) are
// refused.
func Normalize(reqs []PortRequest) ([]PortRequest, error) {
	if len(reqs) > MaxPorts {
		return nil, &Error{Msg: fmt.Sprintf("at most %d ports may be published", MaxPorts), Kind: errdefs.ErrInvalidArgument}
	}
	out := make([]PortRequest, 0, len(reqs))
	seen := map[PortRequest]bool{}
	for _, r := range reqs {
		if r.Protocol == "" {
			r.Protocol = TCP
		}
		if r.Protocol != TCP && r.Protocol != UDP {
			return nil, &Error{Msg: fmt.Sprintf("protocol %q: want tcp or udp", r.Protocol), Kind: errdefs.ErrInvalidArgument}
		}
		if r.ContainerPort == 0 {
			return nil, &Error{Msg: "container_port must be between 1 and 65535", Kind: errdefs.ErrInvalidArgument}
		}
		if seen[r] {
			return nil, &Error{Msg: fmt.Sprintf("%s port %d is listed twice", r.Protocol, r.ContainerPort), Kind: errdefs.ErrInvalidArgument}
		}
		seen[r] = true
		out = append(out, r)
	}
	return out, nil
}

// BoundFunc says whether a host port is in use by something else on the
// host for the protocol.
type BoundFunc func(protocol string, port uint16) bool

// Bound tries to bind the port on every address of the host (IPv4 and IPv6),
// and says it is bound when that fails. A listener on one address only, or a
// UDP socket, makes the port unusable for publishing just the same.
func Bound(protocol string, port uint16) bool {
	addr := net.JoinHostPort("", strconv.Itoa(int(port)))
	switch protocol {
	case UDP:
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return true
		}
		c.Close()
	default:
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return true
		}
		l.Close()
	}
	return false
}

// Allocator hands out host ports from a range. It is safe for concurrent
// use. Its state is rebuilt with Restore from what the containers' labels
// record.
type Allocator struct {
	rng   Range
	bound BoundFunc

	mu     sync.Mutex
	byID   map[string][]Mapping
	holder map[uint16]string // host port -> instance ID
	next   uint16            // where the next search starts
}

// NewAllocator returns an allocator for rng that skips ports bound says are
// in use (Bound when nil).
func NewAllocator(rng Range, bound BoundFunc) *Allocator {
	if bound == nil {
		bound = Bound
	}
	return &Allocator{rng: rng, bound: bound, byID: map[string][]Mapping{}, holder: map[uint16]string{}, next: rng.First}
}

// Range is the allocator's range.
func (a *Allocator) Range() Range { return a.rng }

// Reserve gives id a host port for each request, all or none. Reserving
// again for an ID that holds ports answers the same mappings when the
// requests are the same, and a Conflict otherwise. Ports are handed out
// round-robin through the range, so a port just released is not reused at
// once (a client may still hold a connection tracking entry for it).
func (a *Allocator) Reserve(id string, reqs []PortRequest) ([]Mapping, error) {
	reqs, err := Normalize(reqs)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if held, ok := a.byID[id]; ok {
		if !sameRequests(held, reqs) {
			return nil, conflict("instance %s already holds host ports for other container ports", id)
		}
		return slices.Clone(held), nil
	}
	if len(reqs) == 0 {
		return nil, nil
	}
	out := make([]Mapping, 0, len(reqs))
	taken := map[uint16]bool{}
	p := a.next
	for tried := 0; tried < a.rng.Size() && len(out) < len(reqs); tried++ {
		port := p
		if p == a.rng.Last {
			p = a.rng.First
		} else {
			p++
		}
		if _, held := a.holder[port]; held || taken[port] {
			continue
		}
		r := reqs[len(out)]
		if a.bound(r.Protocol, port) {
			continue
		}
		taken[port] = true
		out = append(out, Mapping{ContainerPort: r.ContainerPort, Protocol: r.Protocol, HostPort: port})
	}
	if len(out) < len(reqs) {
		return nil, &Error{
			Msg:  fmt.Sprintf("%v: %d ports asked for, %d free in %s", ErrExhausted, len(reqs), len(out), a.rng),
			Kind: errors.Join(errdefs.ErrConflict, ErrExhausted),
		}
	}
	a.next = p
	for _, m := range out {
		a.holder[m.HostPort] = id
	}
	a.byID[id] = out
	return slices.Clone(out), nil
}

// Restore records mappings an existing instance holds (read back from its
// labels). A port recorded for another instance is a Conflict: two
// containers claim it, and the caller must decide which one keeps it.
// Ports outside the range (it changed since) are held all the same.
func (a *Allocator) Restore(id string, mappings []Mapping) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if held, ok := a.byID[id]; ok {
		if slices.Equal(held, mappings) {
			return nil
		}
		return conflict("instance %s already holds other host ports", id)
	}
	for _, m := range mappings {
		if other, ok := a.holder[m.HostPort]; ok {
			return conflict("host port %d is recorded for both %s and %s", m.HostPort, other, id)
		}
	}
	if len(mappings) == 0 {
		return nil
	}
	for _, m := range mappings {
		a.holder[m.HostPort] = id
	}
	a.byID[id] = slices.Clone(mappings)
	return nil
}

// Release frees id's ports and returns them; nothing when it holds none.
func (a *Allocator) Release(id string) []Mapping {
	a.mu.Lock()
	defer a.mu.Unlock()
	held := a.byID[id]
	for _, m := range held {
		delete(a.holder, m.HostPort)
	}
	delete(a.byID, id)
	return held
}

// Held returns id's mappings.
func (a *Allocator) Held(id string) []Mapping {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.byID[id])
}

// Holders returns every instance holding ports, with its mappings.
func (a *Allocator) Holders() map[string][]Mapping {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string][]Mapping, len(a.byID))
	for id, m := range a.byID {
		out[id] = slices.Clone(m)
	}
	return out
}

// Free is the number of ports of the range no instance holds (some may be
// bound by other processes).
func (a *Allocator) Free() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.rng.Size()
	for p := range a.holder {
		if a.rng.Contains(p) {
			n--
		}
	}
	return n
}

func sameRequests(held []Mapping, reqs []PortRequest) bool {
	if len(held) != len(reqs) {
		return false
	}
	for i, m := range held {
		if m.ContainerPort != reqs[i].ContainerPort || m.Protocol != reqs[i].Protocol {
			return false
		}
	}
	return true
}
