package testenv

import (
	"sync"
	"testing"
)

// Fixture is a shared fixture of a package's integration tests (a daemon, a
// registry, a pushed image), started once, by the first test that needs it,
// and closed by the package's TestMain after m.Run. A package whose
// integration tests all skip, as under `go test -short`, starts nothing.
type Fixture struct {
	// Start makes the fixture and returns the function that closes it.
	Start func() (stop func(), err error)

	once sync.Once
	err  error
	stop func()
}

// Need starts the fixture on first use and fails tb if it could not start;
// every later call fails the same way. Tests call it after Require. What
// Start set is visible to every caller once Need returns.
func (f *Fixture) Need(tb testing.TB) {
	tb.Helper()
	f.once.Do(func() { f.stop, f.err = f.Start() })
	if f.err != nil {
		tb.Fatal(f.err)
	}
}

// Close closes the fixture if it was started. TestMain calls it after m.Run;
// the fixture cannot be started afterwards.
func (f *Fixture) Close() {
	f.once.Do(func() {})
	if f.stop != nil {
		f.stop()
	}
}
