package backend

import (
	"context"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

// FromLabels is the part of an instance its container's labels hold, the
// same on every back end: image, spec hash, the tenant's labels, GPUs,
// published ports, and every label as AgentLabels. The back end fills in
// what its daemon knows (IDs, status, times).
func FromLabels(l map[string]string) runtime.Instance {
	return runtime.Instance{
		Image:       l[runtime.LabelImage],
		SpecHash:    l[runtime.LabelSpecHash],
		Labels:      runtime.UserLabels(l),
		GPUs:        runtime.ParseGPULabels(l[runtime.LabelGPUs], l[runtime.LabelGPUIndexes]),
		Ports:       runtime.PortsFromLabels(l),
		AgentLabels: l,
	}
}

// EnvList is env as NAME=value entries, sorted, as runtimes take it.
func EnvList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// Every calls work every interval until ctx is done, first after one
// interval.
func Every(ctx context.Context, interval time.Duration, work func(context.Context)) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		work(ctx)
	}
}

// DefaultImageGCInterval is how often a back end looks at the free space
// for image garbage collection, unless told otherwise.
const DefaultImageGCInterval = time.Minute

// CollectImagesEvery runs a back end's image garbage collection every
// interval (DefaultImageGCInterval when not above zero) until ctx is done,
// logging a failure that is not the end of ctx.
func CollectImagesEvery(ctx context.Context, interval time.Duration, log *slog.Logger, collect func(context.Context) error) {
	if interval <= 0 {
		interval = DefaultImageGCInterval
	}
	Every(ctx, interval, func(ctx context.Context) {
		if err := collect(ctx); err != nil && ctx.Err() == nil {
			log.Warn("image garbage collection", "error", err)
		}
	})
}

// Closer closes a back end once, whoever calls Close: it stops the back
// end's loops (cancel), waits for them and for what runs detached on its
// connection (wg), then closes the connection.
type Closer struct {
	once sync.Once
	err  error
}

// Close does it the first time and answers the same error every time.
func (c *Closer) Close(cancel context.CancelFunc, wg *sync.WaitGroup, conn io.Closer) error {
	c.once.Do(func() {
		cancel()
		wg.Wait()
		c.err = conn.Close()
	})
	return c.err
}
