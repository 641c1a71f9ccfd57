package backend

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// PullGroup lets the pulls of one image share one fetch: a start, a second
// start and a pre-pull of the same image at the same time make the
// registry serve each blob once. A pull joins the one in flight only when
// both carry the same credentials (or both none), so that no request rides
// a pull of a private image it could not have made itself; a pull with
// other credentials waits for the one in flight to end, and its caller then
// decides again, as it would for an image already present. The zero value
// is ready to use.
type PullGroup struct {
	mu      sync.Mutex
	flights map[string]*pullFlight
}

type pullFlight struct {
	creds [sha256.Size]byte
	done  chan struct{}
	err   error // set before done closes

	mu       sync.Mutex
	watchers []func(events.PullProgress)
	last     *events.PullProgress
}

// publish hands p to every pull sharing the flight. It holds f.mu so that
// a pull that stopped watching (unwatch) hears nothing more.
func (f *pullFlight) publish(p events.PullProgress) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = &p
	for _, w := range f.watchers {
		w(p)
	}
}

// watch adds w to the flight's watchers, handing it the last progress at
// once, and returns its place.
func (f *pullFlight) watch(w func(events.PullProgress)) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watchers = append(f.watchers, w)
	if f.last != nil {
		w(*f.last)
	}
	return len(f.watchers) - 1
}

func (f *pullFlight) unwatch(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watchers[n] = func(events.PullProgress) {}
}

// credsKey tells credentials apart without keeping them.
func credsKey(auth *runtime.RegistryAuth) [sha256.Size]byte {
	if auth == nil {
		return [sha256.Size]byte{}
	}
	return sha256.Sum256([]byte("auth\x00" + auth.Username + "\x00" + auth.Password))
}

// Do pulls ref with pull, or shares the pull of ref in flight.
//
// With no pull of ref in flight, Do runs pull, handing it a progress
// function that reports to progress and to every pull that joins, and
// returns its error. Whatever marks the image as pulled with credentials
// must be done within pull, before a waiting pull looks at the image.
//
// With a pull of ref in flight with the same credentials, Do reports that
// pull's progress to progress until it ends and returns its error: the
// same request would have ended the same way. When that pull ended only
// because its own caller went away, Do returns decide true.
//
// With a pull of ref in flight with other credentials, Do waits for it to
// end and returns decide true.
//
// decide true means: the image may be present now; look again, check the
// request's access as for any image present, and call Do again if it is
// still missing.
func (g *PullGroup) Do(ctx context.Context, ref string, auth *runtime.RegistryAuth, progress func(events.PullProgress),
	pull func(progress func(events.PullProgress)) error) (decide bool, err error) {
	key := credsKey(auth)
	g.mu.Lock()
	f := g.flights[ref]
	if f == nil {
		f = &pullFlight{creds: key, done: make(chan struct{})}
		if g.flights == nil {
			g.flights = map[string]*pullFlight{}
		}
		g.flights[ref] = f
		g.mu.Unlock()
		f.watch(progress)
		defer func() {
			g.mu.Lock()
			delete(g.flights, ref)
			g.mu.Unlock()
			f.err = err
			close(f.done)
		}()
		return false, pull(f.publish)
	}
	g.mu.Unlock()
	if f.creds == key {
		defer f.unwatch(f.watch(progress))
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	if f.creds != key || errors.Is(f.err, context.Canceled) {
		return true, nil
	}
	return false, f.err
}
