package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	ctdclient "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/numa"
)

func TestGPUMockConfig(t *testing.T) {
	t.Parallel()
	env := map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken, "GPU_MOCK": "dgxh100"}
	cfg, err := loadConfig(envOf(env), "")
	if err != nil || cfg.GPUMock != "dgxh100" {
		t.Fatalf("GPU_MOCK=dgxh100: %+v, %v", cfg.GPUMock, err)
	}
	env["GPU_MOCK"] = "dgx-z"
	if _, err := loadConfig(envOf(env), ""); err == nil || !strings.Contains(err.Error(), "GPU_MOCK") ||
		!strings.Contains(err.Error(), "pcie8x4090") {
		t.Errorf("GPU_MOCK=dgx-z: %v, want an error naming GPU_MOCK and the machines", err)
	}
}

// TestGPUMockRefusedWithRealDriver: the mock is refused where the kernel
// module is loaded, or where NVML initialises; not on a host without either.
func TestGPUMockRefusedWithRealDriver(t *testing.T) {
	t.Parallel()
	noLib := &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
	panics := &mock.Interface{InitFunc: func() nvml.Return { panic("no libnvidia-ml.so.1") }}
	shutdown := false
	works := &mock.Interface{
		InitFunc:     func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc: func() nvml.Return { shutdown = true; return nvml.SUCCESS },
	}

	clean := t.TempDir()
	if why := realNVIDIADriver(clean, noLib); why != "" {
		t.Errorf("host without a driver: %q", why)
	}
	if why := realNVIDIADriver(clean, panics); why != "" {
		t.Errorf("host without libnvidia-ml: %q", why)
	}
	if why := realNVIDIADriver(clean, works); why == "" || !shutdown {
		t.Errorf("NVML initialises: %q (shut down again: %v)", why, shutdown)
	}
	withModule := t.TempDir()
	if err := os.MkdirAll(filepath.Join(withModule, "driver/nvidia"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(withModule, "driver/nvidia/version"), []byte("NVRM version: 580.65.06\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if why := realNVIDIADriver(withModule, noLib); !strings.Contains(why, "driver/nvidia/version") {
		t.Errorf("kernel module loaded: %q", why)
	}
}

// TestAgentGPUMockEndToEnd runs the built agent as a scheduler's developer
// would, with GPU_MOCK=dgxa100 on a private containerd: the host says it is
// a mock, a 2-GPU rental gets a pair of GPUs on one NUMA node with exactly
// their stand-in /dev/nvidiaN nodes, GET shows them, and terminating frees
// them.
func TestAgentGPUMockEndToEnd(t *testing.T) {
	w := newWorld(t)
	agent := startAgent(t, w.bin, append(slices.Clone(w.env), "GPU_MOCK=dgxa100"), w.agentLog)
	evs := agent.eventStream("")

	code, body := agent.call("GET", "/gpus", nil)
	gpus, _ := body["gpus"].([]any)
	if code != http.StatusOK || body["mock"] != "dgxa100" || len(gpus) != 8 {
		t.Fatalf("GET /gpus: %d %v", code, body)
	}
	if code, body := agent.call("GET", "/host", nil); code != http.StatusOK || body["gpu_mock"] != "dgxa100" {
		t.Fatalf("GET /host: %d gpu_mock %v", code, body["gpu_mock"])
	}
	if log, _ := os.ReadFile(w.agentLog); !strings.Contains(string(log), `"gpu_mock":"dgxa100"`) {
		t.Errorf("agent log does not say it runs on a mock:\n%s", log)
	}

	code, body = agent.call("POST", "/start_instance", map[string]any{
		"instance_id": "mock-gpu", "image": w.image, "gpu_count": 2,
		"command": []string{"ls", "/dev", "env", "sleep", "inf"},
	})
	if code != http.StatusOK {
		t.Fatalf("start with gpu_count 2: %d %v", code, body)
	}
	await(t, evs, "mock-gpu", events.TypeInstanceRunning)

	code, body = agent.call("GET", "/instances/mock-gpu", nil)
	held, _ := body["gpus"].([]any)
	if code != http.StatusOK || len(held) != 2 {
		t.Fatalf("GET /instances/mock-gpu: %d %v", code, body)
	}
	var minors []string
	holders := map[float64]string{}
	_, list := agent.call("GET", "/gpus", nil)
	for _, g := range list["gpus"].([]any) {
		m := g.(map[string]any)
		holders[m["index"].(float64)] = m["held_by"].(string)
	}
	numaSeen := map[float64]bool{}
	for _, g := range held {
		m := g.(map[string]any)
		idx := m["index"].(float64)
		if holders[idx] != "mock-gpu" {
			t.Errorf("GET /gpus: GPU %v held by %q, want mock-gpu", idx, holders[idx])
		}
		for _, gg := range list["gpus"].([]any) {
			if x := gg.(map[string]any); x["index"] == idx {
				numaSeen[x["numa_node"].(float64)] = true
				minors = append(minors, fmt.Sprintf("nvidia%v", x["minor_number"]))
			}
		}
	}
	if len(numaSeen) != 1 {
		t.Errorf("2-GPU rental spans NUMA nodes %v", numaSeen)
	}
	// Its GPUs are on the mock's NUMA node 0, laid over this host's CPUs:
	// its CPUs and memory are pinned there, in the OCI spec containerd runs.
	if numaSeen[0] {
		nodes := mockNodes(t)
		cpu, labels := containerCPU(t, w.ctd.Address, "mock-gpu")
		if cpu == nil || cpu.Cpus != nodes[0].CPUList || cpu.Mems != nodes[0].Mems {
			t.Errorf("container's cpuset = %+v, want CPUs %s mems %s", cpu, nodes[0].CPUList, nodes[0].Mems)
		}
		if labels[numa.LabelNode] != "0" {
			t.Errorf("container labels = %v, want %s=0", labels, numa.LabelNode)
		}
	}

	// The container sees its two stand-in nodes and no other GPU's, and is
	// told the GPUs are a mock's.
	var out string
	for range 100 {
		out = agentLogs(t, agent, "mock-gpu")
		if strings.Contains(out, "HOST_AGENT_GPU_MOCK=") {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling the output, not timing it
	}
	var nodes []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "nvidia") {
			nodes = append(nodes, line)
		}
	}
	slices.Sort(nodes)
	slices.Sort(minors)
	if !slices.Equal(nodes, minors) || !strings.Contains(out, "HOST_AGENT_GPU_MOCK=dgxa100") {
		t.Errorf("container's /dev has %v, want %v; output:\n%s", nodes, minors, out)
	}

	if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "mock-gpu"}); code != http.StatusOK {
		t.Fatalf("terminate: %d %v", code, body)
	}
	_, list = agent.call("GET", "/gpus", nil)
	for _, g := range list["gpus"].([]any) {
		if m := g.(map[string]any); m["held_by"] != "" {
			t.Errorf("after terminate GPU %v is held by %v", m["index"], m["held_by"])
		}
	}
	if sets, _ := list["free_sets"].([]any); len(sets) != 4 || sets[3].(map[string]any)["available"] != true {
		t.Errorf("after terminate free_sets = %v, want all 8 free", list["free_sets"])
	}
}

// containerCPU reads the CPU resources of an instance's OCI spec, and its
// labels, from containerd.
func containerCPU(t *testing.T, addr, id string) (*specs.LinuxCPU, map[string]string) {
	t.Helper()
	cl, err := ctdclient.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := namespaces.WithNamespace(context.Background(), "rentals")
	c, err := cl.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	labels, err := c.Labels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Linux == nil || s.Linux.Resources == nil {
		return nil, labels
	}
	return s.Linux.Resources.CPU, labels
}

// mockNodes are the two-socket mock machine's NUMA nodes as the agent lays
// them over this host's CPUs.
func mockNodes(t *testing.T) []numa.Node {
	t.Helper()
	host, err := numa.ReadNodes("/sys")
	if err != nil || len(host) == 0 {
		t.Fatalf("host NUMA nodes: %v %v", host, err)
	}
	nodes, err := numa.Overlay(host, 2)
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

func agentLogs(t *testing.T, a *agentProc, id string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", a.base+"/instances/"+id+"/logs", nil)
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
