package containerd

import (
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// BenchmarkStartTerminate measures one rental's life (start, then terminate)
// through the agent's runtime, and the same work done with containerd's
// client directly, on the same daemon and image in the same run: the
// difference is what the agent adds (labels, confinement, exit tracking,
// log files). The image is pulled before timing starts.
func BenchmarkStartTerminate(b *testing.B) {
	needDaemon(b)
	b.Run("agent", func(b *testing.B) {
		ns := "bench-agent"
		r, err := New(Options{Address: daemon.Address, Namespace: ns, AgentID: "bench", LogDir: b.TempDir(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		ctx := r.nsCtx(b.Context())
		if _, err := r.Start(ctx, payloadSpec("warm", "sleep", "inf")); err != nil {
			b.Fatal(err)
		}
		if err := r.Terminate(ctx, "warm", 0); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := range b.N {
			id := fmt.Sprintf("bench-%d", i)
			if _, err := r.Start(ctx, payloadSpec(id, "sleep", "inf")); err != nil {
				b.Fatal(err)
			}
			if err := r.Terminate(ctx, id, 5*time.Second); err != nil {
				b.Fatal(err)
			}
		}
	})
	// raw-containerd is the bare client; raw-containerd-confined adds only
	// the tenant confinement (no_new_privileges, default seccomp), to tell
	// its cost from the agent's own bookkeeping.
	for _, confined := range []bool{false, true} {
		name := "raw-containerd"
		if confined {
			name += "-confined"
		}
		b.Run(name, func(b *testing.B) { benchRaw(b, confined) })
	}
}

func benchRaw(b *testing.B, confined bool) {
	cl, err := containerd.New(daemon.Address, containerd.WithDefaultNamespace("bench-raw"))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	ctx := b.Context()
	ctx = namespaces.WithNamespace(ctx, "bench-raw")
	img, err := cl.Pull(ctx, payloadRef, containerd.WithPullUnpack, containerd.WithResolver(newResolver(nil, "")))
	if err != nil {
		b.Fatal(err)
	}
	logDir := b.TempDir()
	opts := []oci.SpecOpts{oci.WithImageConfigArgs(img, []string{"sleep", "inf"})}
	if confined {
		opts = append(opts, withConfinement())
	}
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("raw-%d", i)
		c, err := cl.NewContainer(ctx, id,
			containerd.WithNewSnapshot(id, img),
			containerd.WithRuntime(RuncRuntime, &options.Options{}),
			containerd.WithNewSpec(opts...))
		if err != nil {
			b.Fatal(err)
		}
		task, err := c.NewTask(ctx, cio.LogFile(logDir+"/"+id+".log"))
		if err != nil {
			b.Fatal(err)
		}
		exitC, err := task.Wait(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			b.Fatal(err)
		}
		if err := task.Kill(ctx, syscall.SIGTERM); err != nil {
			b.Fatal(err)
		}
		<-exitC
		if _, err := task.Delete(ctx); err != nil {
			b.Fatal(err)
		}
		if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
			b.Fatal(err)
		}
	}
}
