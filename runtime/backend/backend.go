package backend

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// Started logs and publishes how a back end's start of spec ended: on
// err, an instance.failed event naming the step that failed (a
// *runtime.StepError's); else an instance.running event with the
// instance's published ports. It returns inst and err as they are, so
// that a back end's Start ends with it.
func Started(log *slog.Logger, pub events.Publisher, spec runtime.InstanceSpec, inst runtime.Instance, err error) (runtime.Instance, error) {
	if err != nil {
		var se *runtime.StepError
		step := ""
		if errors.As(err, &se) {
			step = se.Step
		}
		log.Warn("start failed", "instance_id", spec.ID, "step", step, "error", err)
		pub.Publish(events.Event{Type: events.TypeInstanceFailed, InstanceID: spec.ID, Status: "failed", Step: step, Error: err.Error()})
		return runtime.Instance{}, err
	}
	log.Info("instance running", "instance_id", spec.ID, "image", spec.Image, "pid", inst.Pid)
	pub.Publish(events.Event{Type: events.TypeInstanceRunning, InstanceID: spec.ID, Status: string(runtime.StatusRunning), Ports: inst.Ports})
	return inst, nil
}

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
