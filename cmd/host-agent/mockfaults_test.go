package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/host-agent/host-agent/gpu/gpumock"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/server/reporter"
)

// TestAgentGPUMockFaultInjection injects an Xid on the GPU a rental holds
// through POST /mock/gpus/{index}/faults of the built agent in GPU_MOCK mode,
// as a scheduler's developer would: the holder gets instance.gpu_fault on
// /ws, GET /instances/{id} and the heartbeat show the fault, and the GPU is
// benched. An Xid on a GPU in MIG mode reaches the holder of its MIG device.
func TestAgentGPUMockFaultInjection(t *testing.T) {
	w := newWorld(t)
	central := &centralServer{answer: `{}`}
	srv := httptest.NewServer(central)
	t.Cleanup(srv.Close)
	env := append(slices.Clone(w.env), "GPU_MOCK="+gpumock.DGXH100MIG, "MIG_RENTALS=true",
		"API_SERVER_URL="+srv.URL, "HEARTBEAT_INTERVAL=1s", "API_SERVER_TOKEN=central-token-0123456789abcdef")
	agent := startAgent(t, w.bin, env, w.agentLog)
	evs := agent.eventStream("")

	code, body := agent.call("POST", "/start_instance", map[string]any{
		"instance_id": "fault-a", "image": w.image, "gpu_count": 1, "command": []string{"sleep", "inf"},
	})
	if code != http.StatusOK {
		t.Fatalf("start fault-a: %d %v", code, body)
	}
	held := body["gpus"].([]any)[0].(map[string]any)
	index := int(held["index"].(float64))
	await(t, evs, "fault-a", events.TypeInstanceRunning)

	// Bad input names its field; an index with no GPU is a 404.
	if code, body := agent.call("POST", fmt.Sprintf("/mock/gpus/%d/faults", index), map[string]any{"xid": 0}); code != http.StatusBadRequest || body["field"] != "xid" {
		t.Errorf("xid 0: %d %v", code, body)
	}
	if code, body := agent.call("POST", "/mock/gpus/42/faults", map[string]any{"xid": 79}); code != http.StatusNotFound {
		t.Errorf("GPU 42: %d %v", code, body)
	}

	code, body = agent.call("POST", fmt.Sprintf("/mock/gpus/%d/faults", index), map[string]any{"xid": 79})
	if code != http.StatusAccepted || body["uuid"] != held["uuid"] {
		t.Fatalf("inject Xid 79 on GPU %d: %d %v", index, code, body)
	}
	e := await(t, evs, "fault-a", events.TypeInstanceGPUFault)
	if e.Fault == nil || e.Fault.Xid != 79 || !e.Fault.Benched || e.GPU != held["uuid"] {
		t.Fatalf("instance.gpu_fault = %+v", e)
	}
	_, inst := agent.call("GET", "/instances/fault-a", nil)
	faults, _ := inst["gpu_faults"].([]any)
	if len(faults) != 1 || faults[0].(map[string]any)["xid"] != float64(79) {
		t.Errorf("GET /instances/fault-a gpu_faults = %v", inst["gpu_faults"])
	}
	_, list := agent.call("GET", "/gpus", nil)
	if g := list["gpus"].([]any)[index].(map[string]any); g["healthy"] != false || g["unhealthy_reason"] != "xid 79" {
		t.Errorf("GPU %d after Xid 79: %v", index, g)
	}
	central.waitFor(t, "a heartbeat with fault-a's Xid", func(c *centralServer) bool {
		return lastHeartbeatWith(c, 0, func(hb reporter.HeartbeatRequest) bool {
			return slices.ContainsFunc(hb.Instances, func(s reporter.InstanceState) bool {
				return s.InstanceID == "fault-a" && len(s.GPUFaults) == 1 && s.GPUFaults[0].Xid == 79
			})
		})
	})

	// A MIG device's holder hears of an Xid on its parent GPU, by its MIG
	// device's UUID; an Xid that needs no reset leaves the GPU in service.
	code, body = agent.call("POST", "/start_instance", map[string]any{
		"instance_id": "fault-mig", "image": w.image, "mig_profile": "2g.20gb", "command": []string{"sleep", "inf"},
	})
	if code != http.StatusOK {
		t.Fatalf("start fault-mig: %d %v", code, body)
	}
	mig := body["gpus"].([]any)[0].(map[string]any)
	await(t, evs, "fault-mig", events.TypeInstanceRunning)
	if code, body := agent.call("POST", fmt.Sprintf("/mock/gpus/%v/faults", mig["index"]), map[string]any{"xid": 13}); code != http.StatusAccepted {
		t.Fatalf("inject Xid 13: %d %v", code, body)
	}
	e = await(t, evs, "fault-mig", events.TypeInstanceGPUFault)
	if e.Fault == nil || e.Fault.Xid != 13 || e.Fault.Benched || e.GPU != mig["uuid"] {
		t.Fatalf("instance.gpu_fault of the MIG rental = %+v", e)
	}
}
