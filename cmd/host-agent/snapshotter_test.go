package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestSnapshotterConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, runtime, snapshotter string
		want                       string // cfg.Pull.Snapshotter
		wantErr                    string // text the SNAPSHOTTER error must hold; "" for none
	}{
		{name: "unset", want: ""},
		{name: "stargz", snapshotter: "stargz", want: "stargz"},
		{name: "stargz on containerd", runtime: "containerd", snapshotter: "stargz", want: "stargz"},
		{name: "overlayfs named", snapshotter: "overlayfs", want: "overlayfs"},
		{name: "overlayfs on docker", runtime: "docker", snapshotter: "overlayfs", want: "overlayfs"},
		{name: "stargz on docker", runtime: "docker", snapshotter: "stargz", wantErr: "not available on the Docker back end"},
		{name: "not a plugin name", snapshotter: "Star gz", wantErr: "want overlayfs, stargz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken}
			if tc.runtime != "" {
				env["RUNTIME"] = tc.runtime
			}
			if tc.snapshotter != "" {
				env["SNAPSHOTTER"] = tc.snapshotter
			}
			cfg, err := loadConfig(envOf(env), "/nonexistent/.env")
			if tc.wantErr != "" {
				var ce *configError
				if !errors.As(err, &ce) || ce.Var != "SNAPSHOTTER" || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a SNAPSHOTTER error saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Pull.Snapshotter != tc.want {
				t.Errorf("snapshotter = %q, want %q", cfg.Pull.Snapshotter, tc.want)
			}
		})
	}
}

// RUNTIME=auto that lands on Docker is refused at start as RUNTIME=docker is.
func TestSnapshotterRefusedOnChosenDocker(t *testing.T) {
	t.Parallel()
	err := checkSnapshotter(runtimeDocker, "stargz")
	var ce *configError
	if !errors.As(err, &ce) || ce.Var != "SNAPSHOTTER" || !strings.Contains(err.Error(), "Docker") {
		t.Fatalf("err = %v, want a SNAPSHOTTER error naming Docker", err)
	}
	if err := checkSnapshotter(runtimeContainerd, "stargz"); err != nil {
		t.Fatalf("stargz on containerd: %v", err)
	}
}

type fakeSnapshotter struct{ err error }

func (f fakeSnapshotter) CheckSnapshotter(context.Context) error { return f.err }

// A snapshotter containerd cannot use is logged at start as an error
// naming it, with the fix the back end gives.
func TestLogSnapshotter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, snapshotter string
		be                any
		want              string
	}{
		{"missing", "stargz", fakeSnapshotter{errors.New("run deploy/setup-host.sh --lazy-pull")}, "level=ERROR msg=\"SNAPSHOTTER not usable"},
		{"answers", "stargz", fakeSnapshotter{}, "level=INFO msg=\"snapshotter for rentals' images\" snapshotter=stargz"},
		{"unset", "", fakeSnapshotter{errors.New("never asked")}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			logSnapshotter(context.Background(), tc.be, tc.snapshotter, slog.New(slog.NewTextHandler(&buf, nil)))
			if tc.want == "" && buf.Len() != 0 || !strings.Contains(buf.String(), tc.want) {
				t.Errorf("logged %q, want %q", buf.String(), tc.want)
			}
			if tc.name == "missing" && !strings.Contains(buf.String(), "--lazy-pull") {
				t.Errorf("logged %q, want the fix", buf.String())
			}
		})
	}
}
