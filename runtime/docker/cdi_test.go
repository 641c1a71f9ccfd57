package docker

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// The daemon injects GPUs only from CDI specs the agent checked with the
// containerd back end's policy: a spec dockerd reads but the agent does not
// check, or one whose GPU mounts a socket (as the host's generated spec
// mounts nvidia-persistenced's), is refused before anything is created.
func TestDockerInjectsOnlyCheckedCDISpecs(t *testing.T) {
	d := needDockerd(t, moby)
	gh := conformance.NewGPUHost(t)
	start := func(t *testing.T, id string, devices DevicePlanner) error {
		t.Helper()
		rec := conformance.NewRecorder()
		l := lifecycle.New(newScope(t, d).open(t, rec, devices), lifecycle.Options{
			Kinds: []runtime.Admission{gh.Restarted().Kind()}, Events: rec,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		t.Cleanup(func() { l.Close() })
		_, err := l.Start(conformance.Ctx(t), runtime.InstanceSpec{ID: id, Image: payloadRef, Command: []string{"sleep", "inf"},
			GPURequest: runtime.GPURequest{Count: 1}})
		if _, gerr := l.Get(conformance.Ctx(t), id); !errdefs.IsNotFound(gerr) {
			t.Errorf("after a refused start: %v, want nothing left", gerr)
		}
		if h := l.Holdings(); len(h) != 0 {
			t.Errorf("reservations left: %v", h)
		}
		return err
	}

	t.Run("a directory the agent does not check", func(t *testing.T) {
		gh.WriteSpec(t, d.CDIDir, "nvidia.json")
		other := t.TempDir()
		gh.WriteSpec(t, other, "nvidia.json")
		err := start(t, "cdi-unchecked-dir", checkedCDI(t, other, gh))
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "does not check") || !strings.Contains(err.Error(), d.CDIDir) {
			t.Fatalf("start: %v, want a refusal naming %s as unchecked", err, d.CDIDir)
		}
	})
	t.Run("a socket in the spec", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "socket")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		var spec map[string]any
		if err := json.Unmarshal(gh.Spec, &spec); err != nil {
			t.Fatal(err)
		}
		spec["containerEdits"].(map[string]any)["mounts"] = []map[string]any{{
			"hostPath": sock, "containerPath": "/run/nvidia-persistenced/socket", "options": []string{"ro", "nosuid", "nodev", "bind"},
		}}
		hostile := *gh
		if hostile.Spec, err = json.Marshal(spec); err != nil {
			t.Fatal(err)
		}
		hostile.WriteSpec(t, d.CDIDir, "nvidia.json")
		err = start(t, "cdi-socket", checkedCDI(t, d.CDIDir, gh))
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "socket") {
			t.Fatalf("start: %v, want a refusal naming the socket", err)
		}
	})
}
