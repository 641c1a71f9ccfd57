package events

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// DefaultHubSize is how many events a Hub keeps for resuming clients when
// NewHub is given no size.
const DefaultHubSize = 4096

// SubscriberBuffer is how many events may wait for one subscriber. A
// subscriber that falls this far behind is dropped rather than allowed to
// hold up Publish, and resumes from the ring buffer.
const SubscriberBuffer = 256

// ErrSubscriptionClosed is a Subscription's Err after its owner closed it.
var ErrSubscriptionClosed = errors.New("subscription closed")

// SlowConsumerError is a Subscription's Err after the Hub dropped it because
// its channel was full. Every event up to LastSeq was queued for it, so a
// client resumes without a gap from ?since=LastSeq.
type SlowConsumerError struct {
	LastSeq uint64
}

func (e *SlowConsumerError) Error() string {
	return fmt.Sprintf("slow consumer; resume with ?since=%d", e.LastSeq)
}

// Hub numbers events, keeps the last few in a ring buffer and fans them out to
// subscribers. It implements Publisher. The zero value is not usable; call
// NewHub.
type Hub struct {
	now func() time.Time

	mu sync.Mutex
	// ring holds the last len(ring) events; count of them are valid, the
	// oldest at index head.
	ring  []Event
	head  int
	count int
	// next is the Seq the next published event gets.
	next uint64
	subs map[*Subscription]struct{}
}

var _ Publisher = (*Hub)(nil)

// NewHub returns a Hub that keeps the last size events (DefaultHubSize when
// size <= 0). now is its clock (time.Now when nil).
//
// The first Seq is now().UnixMicro() rather than 1: the ring buffer does not
// survive an agent restart, and a client resuming with a Seq from the previous
// run must be told that events were lost rather than silently get nothing.
// Starting from the clock keeps Seqs increasing across restarts, so such a
// Seq is older than anything this Hub holds.
func NewHub(size int, now func() time.Time) *Hub {
	if size <= 0 {
		size = DefaultHubSize
	}
	if now == nil {
		now = time.Now
	}
	first := uint64(1)
	if us := now().UnixMicro(); us > 1 {
		first = uint64(us)
	}
	return &Hub{
		now:  now,
		ring: make([]Event, size),
		next: first,
		subs: map[*Subscription]struct{}{},
	}
}

// Publish numbers e, stamps it with the current time, keeps it for resuming
// clients and hands it to every subscriber. It never blocks: a subscriber
// whose channel is full is dropped, its channel closed and its Err set to a
// *SlowConsumerError.
func (h *Hub) Publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()

	e.Seq = h.next
	h.next++
	e.Time = h.now().UTC()

	if h.count < len(h.ring) {
		h.ring[(h.head+h.count)%len(h.ring)] = e
		h.count++
	} else {
		h.ring[h.head] = e
		h.head = (h.head + 1) % len(h.ring)
	}

	for s := range h.subs {
		select {
		case s.ch <- e:
			s.lastSeq = e.Seq
		default:
			h.dropLocked(s, &SlowConsumerError{LastSeq: s.lastSeq})
		}
	}
}

// Subscribe returns a live subscription and, atomically with it, the
// buffered events a resuming client missed, so that no event falls between
// the backlog and the first live one.
//
// Without hasSince the client wants only live events: backlog is empty.
// With it, backlog holds the buffered events with Seq > since. When since
// lies before what the buffer reaches back to, or after the last Seq issued
// (a Seq from an earlier run of the agent, whose clock has since gone back),
// lost is an events.lost notice and backlog is the whole buffer, since the
// client's place in the stream cannot be found.
func (h *Hub) Subscribe(since uint64, hasSince bool) (sub *Subscription, backlog []Event, lost *Event) {
	h.mu.Lock()
	defer h.mu.Unlock()

	sub = &Subscription{hub: h, ch: make(chan Event, SubscriberBuffer)}
	sub.lastSeq = h.next - 1
	h.subs[sub] = struct{}{}
	if !hasSince {
		return sub, nil, nil
	}

	// oldest is the first Seq still buffered, or the next one to be issued
	// when nothing is buffered.
	oldest := h.next
	if h.count > 0 {
		oldest = h.ring[h.head].Seq
	}
	last := h.next - 1
	if since < oldest-1 || since > last {
		lost = &Event{
			Time: h.now().UTC(),
			Type: TypeEventsLost,
			Message: fmt.Sprintf("events after seq %d are no longer buffered; the buffer reaches back to seq %d",
				since, oldest),
		}
		since = 0
	}
	for i := 0; i < h.count; i++ {
		e := h.ring[(h.head+i)%len(h.ring)]
		if e.Seq > since {
			backlog = append(backlog, e)
		}
	}
	return sub, backlog, lost
}

// dropLocked unsubscribes s with the reason err. h.mu must be held.
func (h *Hub) dropLocked(s *Subscription, err error) {
	if _, ok := h.subs[s]; !ok {
		return
	}
	delete(h.subs, s)
	s.err = err
	close(s.ch)
}

// Subscription is one subscriber's live feed from a Hub.
type Subscription struct {
	hub *Hub
	ch  chan Event
	// lastSeq and err are guarded by hub.mu.
	lastSeq uint64
	err     error
}

// C delivers events in Seq order. It is closed when the subscription ends;
// Err then says why.
func (s *Subscription) C() <-chan Event { return s.ch }

// Close ends the subscription. It may be called more than once, and after
// the Hub dropped the subscription.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	s.hub.dropLocked(s, ErrSubscriptionClosed)
}

// Err is nil while the subscription is live, a *SlowConsumerError after the
// Hub dropped it, and ErrSubscriptionClosed after Close.
func (s *Subscription) Err() error {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.err
}
