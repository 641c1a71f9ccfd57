package gpu

import "github.com/host-agent/host-agent/runtime"

// ForRuntime presents the allocator as the runtime's GPUAllocator, which
// speaks in runtime types.
func (a *Allocator) ForRuntime() runtime.GPUAllocator { return runtimeAllocator{a} }

type runtimeAllocator struct{ a *Allocator }

func (r runtimeAllocator) Reserve(instanceID string, req runtime.GPURequest) ([]runtime.GPU, error) {
	devs, err := r.a.Reserve(instanceID, Request{Count: req.Count, IDs: req.IDs})
	if err != nil {
		return nil, err
	}
	out := make([]runtime.GPU, len(devs))
	for i, d := range devs {
		out[i] = runtime.GPU{Index: d.Index, UUID: d.UUID}
	}
	return out, nil
}

func (r runtimeAllocator) Release(instanceID string) { r.a.Release(instanceID) }

func (r runtimeAllocator) Restore(instanceID string, uuids []string) error {
	return r.a.Restore(instanceID, uuids)
}
