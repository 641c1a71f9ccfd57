package main

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/gpu/gpumock"
	"github.com/host-agent/host-agent/server"
)

// mockFaults serves POST /mock/gpus/{index}/faults on a mock GPU host: the
// fault enters through the mock's NVML events, where the health watcher
// reads real ones. Nil (the route answers 404) without GPU_MOCK.
func mockFaults(m *gpumock.Machine) server.MockFaultInjector {
	if m == nil {
		return nil
	}
	return mockFaultInjector{m}
}

type mockFaultInjector struct{ m *gpumock.Machine }

func (f mockFaultInjector) InjectFault(ctx context.Context, index int, xid uint64, ecc bool) (string, error) {
	if index < 0 || index >= len(f.m.Devices) {
		return "", errdefs.ErrNotFound.WithMessage(fmt.Sprintf("mock GPU host %s has no GPU %d (it has %d)", f.m.Name, index, len(f.m.Devices)))
	}
	uuid, _ := f.m.Devices[index].GetUUID()
	if err := f.m.Inject(ctx, index, xid, ecc); err != nil {
		return "", err
	}
	return uuid, nil
}
