package testenv

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// TestDockerdsOnPrivateContainerd starts each dockerd the Docker back end is
// tested against on a private containerd and checks the API version it
// answers and whether it offers CDI.
func TestDockerdsOnPrivateContainerd(t *testing.T) {
	Require(t, "containerd", "containerd-shim-runc-v2", "runc")
	dir, err := os.MkdirTemp("", "ha-ctd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctd, err := StartContainerd(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctd.Close() })
	for _, tc := range []struct {
		name, minAPI string
		bin          func() (string, error)
		cdi          bool
	}{
		{"debian", "1.41", debianDockerd, false},
		{"moby", "1.50", MobyDockerd, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin, err := tc.bin()
			if err != nil {
				t.Fatal(err)
			}
			ddir, err := os.MkdirTemp("", "ha-d-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(ddir) })
			d, err := StartDockerd(ddir, DockerdOptions{Bin: bin, Containerd: ctd.Address, CDI: tc.cdi, NvidiaHook: !tc.cdi})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(d.Close)
			cl, err := client.New(client.WithHost(d.Host))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			v, err := cl.ServerVersion(ctx, client.ServerVersionOptions{})
			if err != nil {
				t.Fatal(err)
			}
			info, err := cl.Info(ctx, client.InfoOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("dockerd %s, API %s, CDI spec dirs %v, runtimes %d", v.Version, v.APIVersion, info.Info.CDISpecDirs, len(info.Info.Runtimes))
			if v.APIVersion < tc.minAPI {
				t.Errorf("API %s, want at least %s", v.APIVersion, tc.minAPI)
			}
			if got := len(info.Info.CDISpecDirs) > 0; got != tc.cdi {
				t.Errorf("CDI spec dirs %v; want CDI %v", info.Info.CDISpecDirs, tc.cdi)
			}
		})
	}
}

func debianDockerd() (string, error) {
	if b := DebianDockerd(); b != "" {
		return b, nil
	}
	return "", errors.New("Debian's dockerd (docker.io) is not installed")
}
