package main

import (
	"net/http"
	"slices"
	"syscall"
	"testing"

	"github.com/host-agent/host-agent/gpu/gpumock"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/numa"
)

// TestAgentGPUMockNUMARestart runs the built agent on the two-socket mock
// DGX H100 (GPUs 0-3 on NUMA node 0, 4-7 on node 1, laid over this host's
// CPUs): a rental's cpuset and mems follow its GPU's node, the share each
// takes of its node is counted again after the agent restarts, so a rental
// started after the restart that no longer fits on the node runs unpinned
// rather than on CPUs the earlier rental holds, while one that fits on the
// other node is pinned there.
func TestAgentGPUMockNUMARestart(t *testing.T) {
	w := newWorld(t)
	nodes := mockNodes(t)
	env := append(slices.Clone(w.env), "GPU_MOCK="+gpumock.DGXH100, "HOST_RESERVED_CPUS=0")
	agent := startAgent(t, w.bin, env, w.agentLog)
	evs := agent.eventStream("")

	start := func(id, gpu string, cpus float64) {
		t.Helper()
		req := map[string]any{"instance_id": id, "image": w.image, "gpus": []string{gpu}, "command": []string{"sleep", "inf"}}
		if cpus > 0 {
			req["resources"] = map[string]any{"cpus": cpus}
		}
		if code, body := agent.call("POST", "/start_instance", req); code != http.StatusOK {
			t.Fatalf("start %s on GPU %s: %d %v", id, gpu, code, body)
		}
		await(t, evs, id, events.TypeInstanceRunning)
	}
	pinned := func(id string, node int) {
		t.Helper()
		cpu, labels := containerCPU(t, w.ctd.Address, id)
		if cpu == nil || cpu.Cpus != nodes[node].CPUList || cpu.Mems != nodes[node].Mems || labels[numa.LabelNode] != string(rune('0'+node)) {
			t.Errorf("%s: cpuset %+v, label %s=%q; want CPUs %s mems %s on node %d",
				id, cpu, numa.LabelNode, labels[numa.LabelNode], nodes[node].CPUList, nodes[node].Mems, node)
		}
	}

	// numa-a takes all of node 0's CPUs; numa-c one GPU's share of node 1.
	start("numa-a", "0", float64(nodes[0].CPUs))
	pinned("numa-a", 0)
	start("numa-c", "4", 0)
	pinned("numa-c", 1)
	_, before := containerCPU(t, w.ctd.Address, "numa-a")

	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	<-agent.done
	agent = startAgent(t, w.bin, env, w.agentLog)
	evs = agent.eventStream("")

	pinned("numa-a", 0)
	pinned("numa-c", 1)
	if _, after := containerCPU(t, w.ctd.Address, "numa-a"); after[numa.LabelCPUs] != before[numa.LabelCPUs] || after[numa.LabelMemoryMB] != before[numa.LabelMemoryMB] {
		t.Errorf("numa-a's NUMA labels changed across the restart: %v, then %v", before, after)
	}

	// Node 0 is full: a rental on GPU 1 (node 0) runs on any CPU, not on
	// node 0's, which numa-a holds.
	start("numa-b", "1", 0.5)
	cpu, labels := containerCPU(t, w.ctd.Address, "numa-b")
	if (cpu != nil && cpu.Cpus != "") || labels[numa.LabelNode] != "" {
		t.Errorf("numa-b on a full node 0: cpuset %+v, label %s=%q; want unpinned", cpu, numa.LabelNode, labels[numa.LabelNode])
	}
	// Node 1 still has room: a rental on GPU 5 is pinned there.
	start("numa-d", "5", 0)
	pinned("numa-d", 1)

	// Once numa-a is gone, node 0 takes rentals again.
	if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "numa-a"}); code != http.StatusOK {
		t.Fatalf("terminate numa-a: %d %v", code, body)
	}
	start("numa-e", "2", 0)
	pinned("numa-e", 0)
}
