package events

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fixedClock returns a clock that starts at start and moves one second per
// call, so that Times differ and seqs are predictable.
func fixedClock(start time.Time) func() time.Time {
	var mu sync.Mutex
	t := start
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now := t
		t = t.Add(time.Second)
		return now
	}
}

var epoch = time.Date(2025, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))

func seqs(es []Event) []uint64 {
	out := []uint64{}
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

func TestHubNumbersAndStamps(t *testing.T) {
	t.Parallel()
	h := NewHub(0, fixedClock(epoch))
	if got := len(h.ring); got != DefaultHubSize {
		t.Fatalf("ring size %d, want %d", got, DefaultHubSize)
	}
	first := uint64(epoch.UnixMicro())
	_, _, _ = h.Subscribe(0, false)
	sub, _, _ := h.Subscribe(0, false)
	for i := 0; i < 3; i++ {
		h.Publish(Event{Type: TypeInstanceRunning, Seq: 999, InstanceID: fmt.Sprint(i)})
	}
	for i := 0; i < 3; i++ {
		e := <-sub.C()
		if want := first + uint64(i); e.Seq != want {
			t.Errorf("event %d: seq %d, want %d", i, e.Seq, want)
		}
		if e.Time.Location() != time.UTC {
			t.Errorf("event %d: time %v is not UTC", i, e.Time)
		}
		if e.InstanceID != fmt.Sprint(i) {
			t.Errorf("event %d: out of order (%q)", i, e.InstanceID)
		}
	}
}

// A later agent run starts with higher seqs than an earlier one left off at,
// as long as the clock moved on.
func TestHubSeqsIncreaseAcrossRestarts(t *testing.T) {
	t.Parallel()
	h1 := NewHub(4, fixedClock(epoch))
	for i := 0; i < 10; i++ {
		h1.Publish(Event{Type: TypeInstanceRunning})
	}
	_, backlog, _ := h1.Subscribe(0, true)
	lastOfRun1 := backlog[len(backlog)-1].Seq

	h2 := NewHub(4, fixedClock(epoch.Add(time.Minute)))
	h2.Publish(Event{Type: TypeInstanceRunning})
	_, backlog, lost := h2.Subscribe(lastOfRun1, true)
	if backlog[0].Seq <= lastOfRun1 {
		t.Fatalf("run 2 seq %d not above run 1's last %d", backlog[0].Seq, lastOfRun1)
	}
	if lost == nil {
		t.Fatalf("resuming with a seq of the previous run: no events.lost notice")
	}
}

func TestHubSubscribeResume(t *testing.T) {
	t.Parallel()
	// Ring of 4 after 6 events: seqs f+2..f+5 are buffered, f+0 and f+1
	// are gone.
	f := uint64(epoch.UnixMicro())
	tests := []struct {
		name     string
		since    uint64
		hasSince bool
		want     []uint64
		lost     bool
	}{
		{name: "live only", since: 0, hasSince: false, want: []uint64{}},
		{name: "up to date", since: f + 5, hasSince: true, want: []uint64{}},
		{name: "missed two", since: f + 3, hasSince: true, want: []uint64{f + 4, f + 5}},
		{name: "exactly the oldest", since: f + 1, hasSince: true, want: []uint64{f + 2, f + 3, f + 4, f + 5}},
		{name: "one too old", since: f, hasSince: true, want: []uint64{f + 2, f + 3, f + 4, f + 5}, lost: true},
		{name: "since zero", since: 0, hasSince: true, want: []uint64{f + 2, f + 3, f + 4, f + 5}, lost: true},
		{name: "from the future", since: f + 6, hasSince: true, want: []uint64{f + 2, f + 3, f + 4, f + 5}, lost: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := NewHub(4, fixedClock(epoch))
			for i := 0; i < 6; i++ {
				h.Publish(Event{Type: TypeInstanceRunning})
			}
			sub, backlog, lost := h.Subscribe(tt.since, tt.hasSince)
			defer sub.Close()
			if got := seqs(backlog); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("backlog %v, want %v", got, tt.want)
			}
			if (lost != nil) != tt.lost {
				t.Fatalf("lost = %+v, want lost %v", lost, tt.lost)
			}
			if lost != nil {
				if lost.Type != TypeEventsLost {
					t.Errorf("lost type %q", lost.Type)
				}
				if !strings.Contains(lost.Message, fmt.Sprint(f+2)) {
					t.Errorf("lost message %q does not name the oldest buffered seq %d", lost.Message, f+2)
				}
			}
			// The live feed continues right after the backlog.
			h.Publish(Event{Type: TypeInstanceExited})
			if e := <-sub.C(); e.Seq != f+6 {
				t.Errorf("first live seq %d, want %d", e.Seq, f+6)
			}
		})
	}
}

func TestHubEmptyBufferResume(t *testing.T) {
	t.Parallel()
	h := NewHub(4, fixedClock(epoch))
	f := uint64(epoch.UnixMicro())
	if _, backlog, lost := h.Subscribe(f-1, true); lost != nil || len(backlog) != 0 {
		t.Errorf("since just before the first seq: backlog %v, lost %+v", backlog, lost)
	}
	if _, _, lost := h.Subscribe(f-2, true); lost == nil {
		t.Errorf("since older than a fresh hub: no lost notice")
	}
}

func TestHubDropsSlowSubscriber(t *testing.T) {
	t.Parallel()
	h := NewHub(0, nil)
	slow, _, _ := h.Subscribe(0, false)
	const n = 3 * SubscriberBuffer

	// Publish must not block on the slow subscriber: if it did, this
	// goroutine would never finish and the test would time out.
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := 0; i < n; i++ {
			h.Publish(Event{Type: TypeInstancePullProgress})
		}
	}()
	select {
	case <-published:
	case <-time.After(30 * time.Second):
		t.Fatal("Publish blocked on a subscriber that does not read")
	}

	// The slow one still gets what was queued before it was dropped, then
	// its channel closes.
	var got []Event
	for e := range slow.C() {
		got = append(got, e)
	}
	if len(got) != SubscriberBuffer {
		t.Errorf("slow subscriber got %d events before the drop, want %d", len(got), SubscriberBuffer)
	}
	var sce *SlowConsumerError
	if err := slow.Err(); !errors.As(err, &sce) {
		t.Fatalf("Err = %v, want *SlowConsumerError", err)
	}
	if sce.LastSeq != got[len(got)-1].Seq {
		t.Errorf("LastSeq %d, want the last queued seq %d", sce.LastSeq, got[len(got)-1].Seq)
	}
	if !strings.Contains(sce.Error(), fmt.Sprintf("?since=%d", sce.LastSeq)) {
		t.Errorf("message %q does not say where to resume", sce.Error())
	}
	// Resuming from LastSeq misses nothing.
	_, backlog, lost := h.Subscribe(sce.LastSeq, true)
	if lost != nil || len(backlog) != n-SubscriberBuffer || backlog[0].Seq != sce.LastSeq+1 {
		t.Errorf("resume after drop: %d events from %v, lost %+v", len(backlog), seqs(backlog[:1]), lost)
	}
}

func TestSubscriptionClose(t *testing.T) {
	t.Parallel()
	h := NewHub(8, nil)
	sub, _, _ := h.Subscribe(0, false)
	if err := sub.Err(); err != nil {
		t.Fatalf("live subscription Err = %v", err)
	}
	sub.Close()
	sub.Close()
	if _, ok := <-sub.C(); ok {
		t.Fatal("channel open after Close")
	}
	if err := sub.Err(); !errors.Is(err, ErrSubscriptionClosed) {
		t.Errorf("Err = %v, want ErrSubscriptionClosed", err)
	}
	h.Publish(Event{Type: TypeInstanceRunning}) // must not panic on the closed channel
}

// TestHubConcurrent runs many publishers and subscribers under the race
// detector. Every subscriber must see every event exactly once and in order,
// resuming through the ring buffer whenever it is dropped for being slow.
func TestHubConcurrent(t *testing.T) {
	t.Parallel()
	const publishers, perPublisher, subscribers = 8, 400, 8
	const total = publishers * perPublisher
	h := NewHub(total, nil)

	start := make(chan struct{})
	var subsReady, wg sync.WaitGroup
	errs := make(chan error, subscribers)
	base := h.next - 1 // no goroutine runs yet
	subsReady.Add(subscribers)
	for i := 0; i < subscribers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub, _, _ := h.Subscribe(0, false)
			subsReady.Done()
			var got []uint64
			for len(got) < total {
				e, ok := <-sub.C()
				if !ok {
					var sce *SlowConsumerError
					if !errors.As(sub.Err(), &sce) {
						errs <- fmt.Errorf("closed with %v", sub.Err())
						return
					}
					var backlog []Event
					var lost *Event
					since := base
					if len(got) > 0 {
						since = got[len(got)-1]
					}
					sub, backlog, lost = h.Subscribe(since, true)
					if lost != nil {
						errs <- fmt.Errorf("resume lost events: %s", lost.Message)
						return
					}
					got = append(got, seqs(backlog)...)
					continue
				}
				got = append(got, e.Seq)
			}
			sub.Close()
			if got[0] != base+1 {
				errs <- fmt.Errorf("first seq %d, want %d", got[0], base+1)
			}
			for j := 1; j < len(got); j++ {
				if got[j] != got[j-1]+1 {
					errs <- fmt.Errorf("seq %d followed by %d", got[j-1], got[j])
					return
				}
			}
		}()
	}
	subsReady.Wait()
	var pubs sync.WaitGroup
	for i := 0; i < publishers; i++ {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			<-start
			for j := 0; j < perPublisher; j++ {
				h.Publish(Event{Type: TypeInstanceRunning})
			}
		}()
	}
	close(start)
	pubs.Wait()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
