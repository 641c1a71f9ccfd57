package selftest

import "context"

// SnapshotterChecker says whether containerd reaches the snapshotter that
// rentals' images are unpacked into (the containerd back end's
// CheckSnapshotter).
type SnapshotterChecker interface {
	CheckSnapshotter(ctx context.Context) error
}

// SnapshotterCheck checks the configured snapshotter (SNAPSHOTTER; ""
// is containerd's default). A proxy snapshotter such as stargz is a
// daemon of its own, with its own entry in containerd's configuration:
// either may be missing while containerd itself answers.
func SnapshotterCheck(sc SnapshotterChecker, name string) Check {
	return Check{Name: "snapshotter", Run: func(ctx context.Context) Result {
		if name == "" {
			return ok("containerd's default (overlayfs): images are pulled in full")
		}
		if sc == nil {
			return fail("use RUNTIME=containerd, or unset SNAPSHOTTER", "SNAPSHOTTER=%s needs the containerd back end", name)
		}
		if err := sc.CheckSnapshotter(ctx); err != nil {
			fix := "check containerd's configuration (proxy_plugins) and the snapshotter's daemon"
			if name == "stargz" {
				fix = "run deploy/setup-host.sh --lazy-pull, or unset SNAPSHOTTER"
			}
			return fail(fix, "snapshotter %q: %v", name, err)
		}
		if name == "stargz" {
			return ok("stargz answers: eStargz images start before they are fetched, other images are pulled in full")
		}
		return ok("snapshotter %q answers", name)
	}}
}
