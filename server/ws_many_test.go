package server

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/host-agent/host-agent/runtime/events"
)

// 100 clients follow /ws while 200 instances start, exit and are
// terminated, some of them reading slowly. Each client receives every
// event after its resume point exactly once and in order: when it falls
// behind it is told so, with the sequence number to resume after, which
// is the last one it received, and resuming there loses nothing.
func TestManyWebSocketClientsGetEveryEventInOrder(t *testing.T) {
	t.Parallel()
	const clients, instances = 100, 200
	ts := newTestServer(t, &fakeRuntime{})
	srv := wsServer(t, ts)

	probe := mustDialWS(t, srv, "")
	first := waitSubscribed(t, ts.hub, probe)
	probe.Close()
	// Every event of the run: three per instance and the final marker.
	last := first + 3*instances + 1

	type result struct {
		seqs    []uint64
		resumes int
		err     error
	}
	results := make([]result, clients)
	var wg sync.WaitGroup
	ready := make(chan struct{}, clients)
	for i := range clients {
		wg.Go(func() {
			r := &results[i]
			since := first
			slow := i%10 == 0
			for len(r.seqs) == 0 || r.seqs[len(r.seqs)-1] < last {
				h := http.Header{"Authorization": {"Bearer " + testToken}}
				conn, _, err := websocket.DefaultDialer.Dial(
					"ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?since="+strconv.FormatUint(since, 10), h)
				if err != nil {
					r.err = fmt.Errorf("dial: %w", err)
					return
				}
				if r.resumes == 0 {
					ready <- struct{}{}
				}
				for {
					_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
					var e events.Event
					err := conn.ReadJSON(&e)
					var ce *websocket.CloseError
					if errors.As(err, &ce) && ce.Code == websocket.CloseTryAgainLater {
						resume, perr := strconv.ParseUint(ce.Text[strings.LastIndex(ce.Text, "=")+1:], 10, 64)
						if perr != nil || resume != since {
							r.err = fmt.Errorf("told to resume after %q, last received %d", ce.Text, since)
							conn.Close()
							return
						}
						r.resumes++
						break
					}
					if err != nil {
						r.err = fmt.Errorf("read: %w", err)
						conn.Close()
						return
					}
					if e.Type == events.TypeEventsLost {
						r.err = fmt.Errorf("events lost after %d although the buffer holds them", since)
						conn.Close()
						return
					}
					if e.Seq != since+1 {
						r.err = fmt.Errorf("got seq %d after %d", e.Seq, since)
						conn.Close()
						return
					}
					r.seqs = append(r.seqs, e.Seq)
					since = e.Seq
					if since == last {
						conn.Close()
						return
					}
					if slow {
						time.Sleep(time.Millisecond)
					}
				}
				conn.Close()
			}
		})
	}
	for range clients {
		<-ready
	}
	code := 0
	for n := range instances {
		id := fmt.Sprintf("inst-%d", n)
		ts.hub.Publish(events.Event{Type: events.TypeInstanceRunning, InstanceID: id, Status: "running"})
		ts.hub.Publish(events.Event{Type: events.TypeInstanceExited, InstanceID: id, Status: "exited", ExitCode: &code})
		ts.hub.Publish(events.Event{Type: events.TypeInstanceTerminated, InstanceID: id, Status: "terminated"})
	}
	ts.hub.Publish(events.Event{Type: events.TypeRuntimeConnected, Message: "done"})
	wg.Wait()

	resumed := 0
	for i, r := range results {
		if r.err != nil {
			t.Errorf("client %d: %v", i, r.err)
			continue
		}
		if uint64(len(r.seqs)) != last-first {
			t.Errorf("client %d got %d events, want %d", i, len(r.seqs), last-first)
		}
		if r.resumes > 0 {
			resumed++
		}
	}
	t.Logf("%d of %d clients fell behind and resumed", resumed, clients)
}
