package docker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
)

// The memlock probe answers what runc does under each dockerd here (this
// machine's runc may lack CAP_SYS_RESOURCE: then no, as the agent's own
// capabilities say) and leaves no container behind.
func TestMemlockProbe(t *testing.T) {
	for _, name := range []string{debian, moby} {
		t.Run(name, func(t *testing.T) {
			d := needDockerd(t, name)
			r, err := New(Options{Host: d.Host, AgentID: "probe", StateDir: t.TempDir(),
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if _, err := r.ensureImage(ctx, runtime.InstanceSpec{Image: payloadRef}); err != nil {
				t.Fatal(err)
			}
			before, err := r.client.ContainerList(ctx, client.ContainerListOptions{All: true})
			if err != nil {
				t.Fatal(err)
			}
			raise, err := r.probeRaise(ctx, payloadRef)
			if err != nil {
				t.Fatal(err)
			}
			if want := backend.CanRaiseRlimits(); raise != want {
				t.Errorf("memlock probe says %v; the agent's CAP_SYS_RESOURCE says %v on this host", raise, want)
			}
			after, err := r.client.ContainerList(ctx, client.ContainerListOptions{All: true})
			if err != nil || len(after.Items) != len(before.Items) {
				t.Fatalf("containers before the probe %d, after %d (%v)", len(before.Items), len(after.Items), err)
			}
		})
	}
}

// A limit above the agent's own hard limit, under a daemon whose runc
// cannot raise limits, is refused before the container is made, naming
// the limit and the ceiling. Where runc can raise limits, it goes through.
func TestUlimitAboveCeiling(t *testing.T) {
	hard, ok := runtime.UlimitCeiling("nofile")
	if !ok || hard == runtime.RlimitInfinity || hard >= runtime.MaxNofile {
		t.Skipf("this process's hard nofile (%d) leaves no valid value above it", hard)
	}
	for _, name := range []string{debian, moby} {
		t.Run(name, func(t *testing.T) {
			d := needDockerd(t, name)
			r, err := New(Options{Host: d.Host, AgentID: "ceiling", Scope: "ceiling", StateDir: t.TempDir(),
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if _, err := r.ensureImage(ctx, runtime.InstanceSpec{Image: payloadRef}); err != nil {
				t.Fatal(err)
			}
			can, err := r.probeRaise(ctx, payloadRef)
			if err != nil {
				t.Fatal(err)
			}
			spec := runtime.InstanceSpec{ID: "many-files", Image: payloadRef, Command: []string{"sleep", "inf"},
				Ulimits: map[string]int64{"nofile": int64(hard) + 1}}
			_, err = r.Start(ctx, spec)
			defer func() { _ = r.Terminate(context.Background(), spec.ID, 0) }()
			if can {
				if err != nil {
					t.Fatalf("start with nofile %d where runc can raise it: %v", hard+1, err)
				}
				return
			}
			var ue *runtime.UlimitError
			if !errors.As(err, &ue) || !errdefs.IsFailedPrecondition(err) || ue.ErrorField() != "ulimits.nofile" || ue.Ceiling != hard || ue.Cause != nil {
				t.Fatalf("start with nofile %d above the ceiling of %d: %v, want it refused up front", hard+1, hard, err)
			}
			if _, err := r.client.ContainerInspect(ctx, r.containerName(spec.ID), client.ContainerInspectOptions{}); !errdefs.IsNotFound(convertErr(err)) {
				t.Fatalf("container after the refusal: %v", err)
			}
		})
	}
}
