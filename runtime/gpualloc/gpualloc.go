// Package gpualloc is where the GPU allocator and the runtime meet: it
// presents a gpu.Allocator as the runtime's GPUAllocator, which speaks in
// runtime types, so that neither package imports the other.
package gpualloc

import (
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
)

// New presents a as a runtime.GPUAllocator.
func New(a *gpu.Allocator) runtime.GPUAllocator { return adapter{a} }

type adapter struct{ a *gpu.Allocator }

func (r adapter) Reserve(instanceID string, req runtime.GPURequest) ([]runtime.GPU, error) {
	devs, err := r.a.Reserve(instanceID, gpu.Request{Count: req.Count, IDs: req.IDs, MIGProfile: req.MIGProfile})
	if err != nil {
		return nil, err
	}
	return toRuntime(devs), nil
}

func (r adapter) Release(instanceID string) { r.a.Release(instanceID) }

func (r adapter) Restore(instanceID string, uuids []string) error {
	return r.a.Restore(instanceID, uuids)
}

func (r adapter) Holders() map[string][]runtime.GPU {
	held := r.a.Holders()
	out := make(map[string][]runtime.GPU, len(held))
	for id, devs := range held {
		out[id] = toRuntime(devs)
	}
	return out
}

func toRuntime(devs []gpu.Device) []runtime.GPU {
	out := make([]runtime.GPU, len(devs))
	for i, d := range devs {
		out[i] = runtime.GPU{Index: d.Index, UUID: d.UUID}
	}
	return out
}
