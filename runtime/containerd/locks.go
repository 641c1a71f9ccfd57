package containerd

import (
	"context"
	"sync"
)

// keyedMutex serialises work on one instance ID while leaving other instances
// free to proceed. Entries are dropped when nobody holds or waits for them.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

// Lock locks key and returns its unlock function.
func (k *keyedMutex) Lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedEntry{}
	}
	e := k.locks[key]
	if e == nil {
		e = &keyedEntry{}
		k.locks[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

// inflight remembers the starts in progress per instance, so that a
// terminate can call them off instead of waiting for a pull it would undo.
type inflight struct {
	mu   sync.Mutex
	next uint64
	m    map[string]map[uint64]context.CancelFunc
}

// add records a start's cancel function; remove forgets it.
func (f *inflight) add(id string, cancel context.CancelFunc) (remove func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]map[uint64]context.CancelFunc{}
	}
	if f.m[id] == nil {
		f.m[id] = map[uint64]context.CancelFunc{}
	}
	f.next++
	key := f.next
	f.m[id][key] = cancel
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.m[id], key)
		if len(f.m[id]) == 0 {
			delete(f.m, id)
		}
	}
}

// cancel calls off every start of id in progress and reports whether there
// was one.
func (f *inflight) cancel(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.m[id] {
		c()
	}
	return len(f.m[id]) > 0
}
