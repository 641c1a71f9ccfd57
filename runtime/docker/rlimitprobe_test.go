package docker

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
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
			if want := runtime.CanRaiseRlimits(); raise != want {
				t.Errorf("memlock probe says %v; the agent's CAP_SYS_RESOURCE says %v on this host", raise, want)
			}
			after, err := r.client.ContainerList(ctx, client.ContainerListOptions{All: true})
			if err != nil || len(after.Items) != len(before.Items) {
				t.Fatalf("containers before the probe %d, after %d (%v)", len(before.Items), len(after.Items), err)
			}
		})
	}
}
