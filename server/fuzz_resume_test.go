package server

import (
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime/events"
)

// FuzzWebSocketResume: any query string either is refused naming since, or
// resumes with a backlog that has no gap and no repeat: the events after
// since, in order, or (when since cannot be placed in the buffer) an
// events.lost notice and the whole buffer.
func FuzzWebSocketResume(f *testing.F) {
	f.Add("", uint8(0), uint8(0), int64(0))
	f.Add("since=0", uint8(5), uint8(8), int64(0))
	f.Add("since=3", uint8(20), uint8(8), int64(-17))
	f.Add("since=18446744073709551615", uint8(3), uint8(2), int64(1))
	f.Add("since=-1", uint8(1), uint8(1), int64(0))
	f.Add("since=1e3&since=2", uint8(1), uint8(1), int64(0))
	f.Add("since=%00", uint8(1), uint8(1), int64(0))
	f.Add("since=+5", uint8(9), uint8(4), int64(5))
	f.Add("since=0x10", uint8(9), uint8(4), int64(5))
	f.Add("since", uint8(9), uint8(4), int64(5))
	f.Add("since=;", uint8(9), uint8(4), int64(5))
	f.Fuzz(func(t *testing.T, rawQuery string, published, size uint8, offset int64) {
		q := (&url.URL{RawQuery: rawQuery}).Query()
		since, has, err := resumePoint(q)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "since" {
				t.Fatalf("query %q: error %v does not name since", rawQuery, err)
			}
			return
		}
		if !has && since != 0 {
			t.Fatalf("query %q: no resume point but since %d", rawQuery, since)
		}
		clock := time.Unix(1_700_000_000, 0)
		hub := events.NewHub(int(size%32)+1, func() time.Time { return clock })
		// A Hub numbers its events from its clock's microseconds on.
		var seqs []uint64
		for i := range int(published % 64) {
			hub.Publish(events.Event{Type: events.TypeInstanceRunning, InstanceID: "a"})
			seqs = append(seqs, uint64(clock.UnixMicro())+uint64(i))
		}
		if has && offset != 0 && len(seqs) > 0 {
			// Aim near the issued range, where the edge cases are.
			since = uint64(int64(seqs[0]) + offset%80)
		}
		sub, backlog, lost := hub.Subscribe(since, has)
		defer sub.Close()
		if !has {
			if len(backlog) != 0 || lost != nil {
				t.Fatalf("live-only subscription got a backlog of %d (lost %v)", len(backlog), lost != nil)
			}
			return
		}
		for i := 1; i < len(backlog); i++ {
			if backlog[i].Seq != backlog[i-1].Seq+1 {
				t.Fatalf("backlog has a gap or repeat: %d then %d", backlog[i-1].Seq, backlog[i].Seq)
			}
		}
		buffered := min(len(seqs), int(size%32)+1)
		if lost != nil {
			if lost.Type != events.TypeEventsLost || len(backlog) != buffered {
				t.Fatalf("since %d: lost notice %+v with %d of %d buffered events", since, lost, len(backlog), buffered)
			}
			return
		}
		var want []uint64
		for _, s := range seqs {
			if s > since {
				want = append(want, s)
			}
		}
		if len(backlog) != len(want) {
			t.Fatalf("since %d: backlog of %d events, want %d", since, len(backlog), len(want))
		}
		for i := range want {
			if backlog[i].Seq != want[i] {
				t.Fatalf("since %d: backlog[%d] seq %d, want %d", since, i, backlog[i].Seq, want[i])
			}
		}
	})
}
