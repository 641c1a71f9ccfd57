package backend

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

func TestPullGroupSharesOnePull(t *testing.T) {
	t.Parallel()
	tenant := &runtime.RegistryAuth{Username: "tenant", Password: "s3cret"}
	other := &runtime.RegistryAuth{Username: "tenant", Password: "guess"}
	failed := errors.New("registry is down")
	for _, tc := range []struct {
		name            string
		leader, joiner  *runtime.RegistryAuth
		pullErr         error
		wantDecide      bool
		wantErr         error
		wantJoinerWatch bool
	}{
		{"same credentials, success", tenant, tenant, nil, false, nil, true},
		{"no credentials, success", nil, nil, nil, false, nil, true},
		{"same credentials, failure", tenant, tenant, failed, false, failed, true},
		{"other credentials wait and decide", tenant, other, failed, true, nil, false},
		{"none against credentials wait and decide", tenant, nil, nil, true, nil, false},
		{"leader's caller gone", nil, nil, context.Canceled, true, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var g PullGroup
			var pulls atomic.Int32
			release := make(chan struct{})
			started := make(chan struct{})
			leaderDone := make(chan error, 1)
			go func() {
				_, err := g.Do(context.Background(), "r/x:1", tc.leader, func(events.PullProgress) {}, func(progress func(events.PullProgress)) error {
					pulls.Add(1)
					progress(events.PullProgress{DoneBytes: 1, TotalBytes: 10})
					close(started)
					<-release
					progress(events.PullProgress{DoneBytes: 10, TotalBytes: 10})
					return tc.pullErr
				})
				leaderDone <- err
			}()
			<-started
			var seen atomic.Int32
			joinerDone := make(chan struct{})
			var decide bool
			var err error
			go func() {
				defer close(joinerDone)
				decide, err = g.Do(context.Background(), "r/x:1", tc.joiner, func(p events.PullProgress) { seen.Add(1) }, func(func(events.PullProgress)) error {
					pulls.Add(1)
					return nil
				})
			}()
			time.Sleep(50 * time.Millisecond)
			close(release)
			<-joinerDone
			if err := <-leaderDone; !errors.Is(err, tc.pullErr) {
				t.Errorf("leader: %v; want %v", err, tc.pullErr)
			}
			if n := pulls.Load(); n != 1 {
				t.Errorf("%d pulls; want 1", n)
			}
			if decide != tc.wantDecide || !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Errorf("joiner: decide %v, %v; want %v, %v", decide, err, tc.wantDecide, tc.wantErr)
			}
			if got := seen.Load() > 0; got != tc.wantJoinerWatch {
				t.Errorf("joiner saw the shared pull's progress: %v; want %v", got, tc.wantJoinerWatch)
			}
			// Once ended, the next pull is a pull of its own.
			if decide, err := g.Do(context.Background(), "r/x:1", tc.joiner, func(events.PullProgress) {}, func(func(events.PullProgress)) error {
				pulls.Add(1)
				return nil
			}); decide || err != nil || pulls.Load() != 2 {
				t.Errorf("a later pull: decide %v, %v, %d pulls in all; want its own", decide, err, pulls.Load())
			}
		})
	}
}

func TestPullGroupJoinerLeavesWithItsContext(t *testing.T) {
	t.Parallel()
	var g PullGroup
	release := make(chan struct{})
	started := make(chan struct{})
	go g.Do(context.Background(), "r/x:1", nil, func(events.PullProgress) {}, func(func(events.PullProgress)) error {
		close(started)
		<-release
		return nil
	})
	<-started
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := g.Do(ctx, "r/x:1", nil, func(events.PullProgress) {}, func(func(events.PullProgress)) error {
		t.Error("pulled while another pull was in flight")
		return nil
	}); !errors.Is(err, context.Canceled) {
		t.Fatalf("joiner whose caller went away: %v; want context.Canceled", err)
	}
}
