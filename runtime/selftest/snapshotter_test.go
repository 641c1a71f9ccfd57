package selftest

import (
	"context"
	"errors"
	"strings"
	"testing"
)

type snapshotterFunc func(context.Context) error

func (f snapshotterFunc) CheckSnapshotter(ctx context.Context) error { return f(ctx) }

func TestSnapshotterCheck(t *testing.T) {
	t.Parallel()
	missing := snapshotterFunc(func(context.Context) error { return errors.New(`snapshotter not loaded: stargz`) })
	answers := snapshotterFunc(func(context.Context) error { return nil })
	for _, tc := range []struct {
		name       string
		sc         SnapshotterChecker
		configured string
		want       Status
		detail     string
		fix        string
	}{
		{"default", answers, "", OK, "overlayfs", ""},
		{"stargz answers", answers, "stargz", OK, "eStargz", ""},
		{"stargz missing", missing, "stargz", Fail, "snapshotter not loaded", "--lazy-pull"},
		{"on docker", nil, "stargz", Fail, "containerd back end", "RUNTIME=containerd"},
		{"another missing", missing, "zfs", Fail, `"zfs"`, "proxy_plugins"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := SnapshotterCheck(tc.sc, tc.configured).Run(context.Background())
			if r.Status != tc.want || !strings.Contains(r.Detail, tc.detail) || !strings.Contains(r.Fix, tc.fix) {
				t.Errorf("got %+v, want %s with detail %q and fix %q", r, tc.want, tc.detail, tc.fix)
			}
		})
	}
}
