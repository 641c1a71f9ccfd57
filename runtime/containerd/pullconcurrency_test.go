package containerd

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/events"
)

// newPullRuntime is newRuntime pulling layers at once and in ranges of
// chunk bytes as told.
func newPullRuntime(t *testing.T, layers int, chunk int64) *Runtime {
	t.Helper()
	r, err := New(Options{Address: daemon.Address, Namespace: testNamespace(t), AgentID: "pull-test", LogDir: t.TempDir(),
		Events: conformance.NewRecorder(), PullLayers: layers, PullChunkBytes: chunk, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// bigImage serves an image of layers layers of size random bytes and the
// payload, from a registry of the test's own; no namespace of the daemon
// holds any of its layers.
func bigImage(t *testing.T, layers int, size int64) (*testenv.Registry, string) {
	t.Helper()
	bin, err := testenv.BuildPayload()
	if err != nil {
		t.Fatal(err)
	}
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	ref, err := reg.PushBigImage("big:1", bin, layers, size, uint64(time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	return reg, ref
}

// paddingPath is the registry path of ref's padding layer: the blob
// fetched in most GETs.
func paddingPath(gets map[string]int) string {
	path, most := "", 0
	for p, n := range gets {
		if n > most {
			path, most = p, n
		}
	}
	return path
}

// A layer bigger than the chunk size is fetched in ranges, over several
// connections; each blob is still fetched once, and the image unpacks.
func TestPullFetchesBigLayerInRanges(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	reg, ref := bigImage(t, 1, 4<<20)
	reg.Throttle(4 << 20)
	r := newPullRuntime(t, 4, 1<<20)
	img, err := r.PullImage(ctx(t), ref, nil, func(events.PullProgress) {})
	if err != nil {
		t.Fatal(err)
	}
	if img.SizeBytes < 4<<20 {
		t.Errorf("pulled image %+v; want the padding's 4 MiB", img)
	}
	ranges := reg.RangeGets()
	if p := paddingPath(ranges); ranges[p] < 4 {
		t.Errorf("range GETs %v; want the 4 MiB layer in at least 4 ranges of 1 MiB", ranges)
	}
	for p, n := range reg.BlobGets() {
		if n != 1 {
			t.Errorf("%s fetched %d times from its first byte; want once", p, n)
		}
	}
	if most := reg.MostBlobGetsAtOnce(); most < 2 {
		t.Errorf("at most %d blob GETs at once; want ranges fetched in parallel", most)
	}
}

// A registry that refuses a range without an end (416) still serves the
// image: the pull falls back to one connection per layer.
func TestPullWithoutRangesWhereRegistryRefusesThem(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	reg, ref := ownRegistry(t, "no-ranges:1", 4<<20)
	reg.RefuseOpenRanges()
	r := newPullRuntime(t, 4, 1<<20)
	if _, err := r.PullImage(ctx(t), ref, nil, func(events.PullProgress) {}); err != nil {
		t.Fatalf("pull from a registry that refuses open ranges: %v", err)
	}
}

// PULL_MAX_CONCURRENT_LAYERS of 1 fetches one layer at a time, in one
// range at a time; more fetch layers together.
func TestPullLayersAtOnce(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	for _, tc := range []struct {
		layers   int
		wantMost func(int64) bool
		want     string
	}{
		{1, func(n int64) bool { return n == 1 }, "exactly 1"},
		{4, func(n int64) bool { return n >= 2 }, "at least 2"},
	} {
		reg, ref := bigImage(t, 3, 1<<20)
		reg.Throttle(4 << 20)
		r := newPullRuntime(t, tc.layers, 0)
		if _, err := r.PullImage(ctx(t), ref, nil, func(events.PullProgress) {}); err != nil {
			t.Fatal(err)
		}
		if most := reg.MostBlobGetsAtOnce(); !tc.wantMost(most) {
			t.Errorf("%d layers at once: registry served %d blob GETs at once; want %s", tc.layers, most, tc.want)
		}
		if ranges := reg.RangeGets(); len(ranges) != 0 && !strings.Contains(tc.want, "least") {
			t.Errorf("ranges off: range GETs %v", ranges)
		}
	}
}
