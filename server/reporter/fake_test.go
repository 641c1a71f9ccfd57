package reporter

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

const (
	testAgentID = "host-1"
	testToken   = "agent-token-0123456789"
	testVersion = "1.2.3"
)

// fakeRuntime is a container runtime with a configurable set of instances.
// Terminate records the call and removes the instance, as the real one does;
// a second call for an instance already gone answers NotFound.
type fakeRuntime struct {
	mu        sync.Mutex
	instances []runtime.Instance
	listErr   error
	info      runtime.Info
	// calls are every Terminate call; removed the instances it removed.
	calls   []string
	removed []string
}

var _ Runtime = (*fakeRuntime)(nil)

func newFakeRuntime(instances ...runtime.Instance) *fakeRuntime {
	return &fakeRuntime{
		instances: instances,
		info:      runtime.Info{Name: "containerd", Version: "v2.4.2", Namespace: "rentals"},
	}
}

func (f *fakeRuntime) List(context.Context) ([]runtime.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	return slices.Clone(f.instances), nil
}

func (f *fakeRuntime) Info(context.Context) (runtime.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.info, nil
}

func (f *fakeRuntime) Terminate(_ context.Context, id string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, id)
	i := slices.IndexFunc(f.instances, func(inst runtime.Instance) bool { return inst.ID == id })
	if i < 0 {
		return errdefs.ErrNotFound
	}
	f.removed = append(f.removed, id)
	f.instances = slices.Delete(f.instances, i, i+1)
	return nil
}

func (f *fakeRuntime) set(instances ...runtime.Instance) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.instances = instances
}

// terminateCalls are the IDs Terminate was called with, in order.
func (f *fakeRuntime) terminateCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// terminated are the instances Terminate removed.
func (f *fakeRuntime) terminated() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.removed)
}

// fakeGPUs is a GPU inventory whose GPUs a test may change mid-run.
type fakeGPUs struct {
	mu   sync.Mutex
	gpus []gpu.GPU
}

var _ GPUs = (*fakeGPUs)(nil)

func newFakeGPUs(n int) *fakeGPUs {
	f := &fakeGPUs{}
	for i := range n {
		f.gpus = append(f.gpus, gpu.GPU{
			Index: i, UUID: "GPU-" + string(rune('a'+i)), Name: "NVIDIA H100 80GB HBM3",
			MemoryTotalMiB: 81559, Healthy: true, MIGMode: gpu.MIGDisabled,
		})
	}
	return f
}

func (f *fakeGPUs) GPUs() []gpu.GPU {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.gpus)
}

func (f *fakeGPUs) BestFree() []gpu.BestFree {
	f.mu.Lock()
	defer f.mu.Unlock()
	free := 0
	for _, g := range f.gpus {
		if g.Healthy && g.HeldBy == "" {
			free++
		}
	}
	return []gpu.BestFree{{Size: 1, Available: free >= 1, Link: gpu.LinkSelf}}
}

func (f *fakeGPUs) Faults(string) []gpu.Fault { return nil }

func (f *fakeGPUs) Topology() gpu.Topology {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := gpu.Topology{}
	for i, g := range f.gpus {
		t.GPUs = append(t.GPUs, g.Index)
		t.NUMANodes = append(t.NUMANodes, -1)
		row := make([]gpu.Link, len(f.gpus))
		for j := range row {
			row[j] = gpu.LinkSYS
		}
		row[i] = gpu.LinkSelf
		t.Links = append(t.Links, row)
	}
	return t
}

func (f *fakeGPUs) Usages() []gpu.Usage {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []gpu.Usage
	for _, g := range f.gpus {
		out = append(out, gpu.Usage{
			Index: g.Index, UUID: g.UUID, UtilizationPercent: 90 + g.Index, MemoryUsedMiB: 1024,
			MemoryUsedBytes: 1 << 30, TemperatureC: 70, PowerWatts: 612.5,
		})
	}
	return out
}

func (f *fakeGPUs) DriverVersion() string     { return "550.54.15" }
func (f *fakeGPUs) CUDADriverVersion() string { return "12.4" }

func (f *fakeGPUs) update(fn func([]gpu.GPU) []gpu.GPU) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gpus = fn(f.gpus)
}

// publisher records the events published.
type publisher struct {
	mu     sync.Mutex
	events []events.Event
}

func (p *publisher) Publish(e events.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, e)
}

func (p *publisher) ofType(typ string) []events.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []events.Event
	for _, e := range p.events {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// count is how many log lines contain all of the parts.
func (b *syncBuffer) count(parts ...string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for line := range strings.Lines(b.buf.String()) {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
			n++
		}
	}
	return n
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func intp(i int) *int { return &i }
