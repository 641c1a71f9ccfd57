package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/selftest"
)

// fakeGPUMajor is a character-device major reserved for local use: the
// fake /dev/nvidiaN nodes open nothing.
const fakeGPUMajor = 240

// The self-test's test rental takes a GPU only if no rental holds it. Beside
// an agent whose tenants hold 6 of the host's 8 GPUs it gets the last free
// one; with all 8 held it runs without one and says the GPU part was skipped, and
// why. The agent's GPUs are known from the runtime's record of its
// rentals, the labels, as the agent's own restore reads them.
func TestSelftestLeavesTenantsGPUs(t *testing.T) {
	testenv.Require(t, "containerd", "containerd-shim-runc-v2", "runc")
	ctd, err := testenv.StartContainerd(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctd.Close() })
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	image, err := reg.PushPayload("payload:gpu")
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	lib := dgxa100.New()
	for _, d := range lib.Devices {
		// Healthy: no page retirement or row remapping pending.
		d := d.(*dgxa100.Device)
		d.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return nvml.FEATURE_DISABLED, nvml.SUCCESS }
		d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, nvml.SUCCESS }
	}
	inv, err := gpu.Open(lib, logger)
	if err != nil {
		t.Fatal(err)
	}
	gpus := inv.GPUs()
	specDir := fakeGPUSpec(t, gpus)

	// The running agent's configuration, as it records it at start; its
	// rentals' network is not up, so the self-test checks it, fails that
	// check and writes nothing.
	state := t.TempDir()
	agentCfg, err := loadConfig(mapLookup(map[string]string{
		"AGENT_ID": "gpu-host", "AGENT_TOKEN": "a-token-long-enough-1234", "RUNTIME": "containerd",
		"CONTAINERD_ADDRESS": ctd.Address, "CONTAINERD_NAMESPACE": "tenants", "STATE_DIR": state,
		"CDI_SPEC_DIRS": specDir, "CONTAINERD_ROOT": t.TempDir(), "DISK_RESERVE_GB": "1",
		"RENTAL_NETWORK_NAME": "gpust", "RENTAL_SUBNET": "192.168.213.0/24",
	}), filepath.Join(t.TempDir(), ".env"))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeAgentRecord(agentCfg); err != nil {
		t.Fatal(err)
	}

	cl, err := containerd.New(ctd.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	tenants := namespaces.WithNamespace(context.Background(), "tenants")
	tenant := func(id string, held []gpu.GPU) {
		t.Helper()
		uuids := make([]string, len(held))
		for i, g := range held {
			uuids[i] = g.UUID
		}
		if _, err := cl.NewContainer(tenants, id, containerd.WithNewSpec(oci.WithDefaultSpec()),
			containerd.WithContainerLabels(map[string]string{runtime.LabelInstanceID: id, runtime.LabelGPUs: strings.Join(uuids, ",")})); err != nil {
			t.Fatal(err)
		}
	}
	testRental := func() selftest.Result {
		t.Helper()
		lookup, source, owned, err := selftestLookup(mapLookup(map[string]string{
			"STATE_DIR": state, "SELFTEST_IMAGE": image, "SELFTEST_EGRESS_PROBE": "none", "SELFTEST_BLOCKED_PROBE": "127.0.0.1:9",
		}), filepath.Join(t.TempDir(), ".env"))
		if err != nil || !owned {
			t.Fatalf("the agent's configuration not found: %v", err)
		}
		cfg, err := selftestConfig(lookup)
		if err != nil {
			t.Fatal(err)
		}
		env, err := loadSelftestEnv(lookup)
		if err != nil {
			t.Fatal(err)
		}
		env.source, env.agentOwned = source, owned
		env.nvmlLoader = func() nvml.Interface { return lib }
		env.deviceMajors = []int64{fakeGPUMajor}
		rep := runSelftest(context.Background(), cfg, env, logger, true)
		if r := result(rep, "rental-network"); r.Status != selftest.Fail || !strings.Contains(r.Detail, "running agent's network") {
			t.Errorf("rental-network beside an agent whose network is down: %+v", r)
		}
		return result(rep, "test-rental")
	}

	// GPUs 5 and 7 are free; the agent gives the first free GPU to its
	// next tenant, so the test rental takes the last.
	tenant("tenant-a", gpus[:5])
	tenant("tenant-b", gpus[6:7])
	free := gpus[7]
	r := testRental()
	if r.Status != selftest.OK || !strings.Contains(r.Detail, fmt.Sprintf("nvidia%d (%s)", free.MinorNumber, free.UUID)) {
		t.Fatalf("test-rental with two GPUs free: %+v, want it run on nvidia%d (%s)", r, free.MinorNumber, free.UUID)
	}

	tenant("tenant-c", []gpu.GPU{gpus[5], gpus[7]})
	r = testRental()
	if r.Status != selftest.OK || !strings.Contains(r.Detail, "without a GPU") ||
		!strings.Contains(r.Detail, "all 8 GPUs are held by rentals (tenants/tenant-a, tenants/tenant-b, tenants/tenant-c)") {
		t.Fatalf("test-rental with every GPU held: %+v, want it run without a GPU, saying the GPU part was skipped and why", r)
	}
}

// fakeGPUSpec writes a CDI spec mapping each GPU, by UUID, to a node of
// fakeGPUMajor as /dev/nvidiaN, and returns its directory.
func fakeGPUSpec(t *testing.T, gpus []gpu.GPU) string {
	t.Helper()
	nodes, specDir := t.TempDir(), t.TempDir()
	var devices []map[string]any
	for _, g := range gpus {
		node := filepath.Join(nodes, fmt.Sprintf("nvidia%d", g.MinorNumber))
		if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(unix.Mkdev(fakeGPUMajor, uint32(g.MinorNumber)))); err != nil {
			t.Fatalf("mknod %s: %v", node, err)
		}
		devices = append(devices, map[string]any{
			"name": g.UUID,
			"containerEdits": map[string]any{
				"deviceNodes": []map[string]any{{"path": fmt.Sprintf("/dev/nvidia%d", g.MinorNumber), "hostPath": node}},
			},
		})
	}
	b, err := json.Marshal(map[string]any{"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu", "devices": devices})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(specDir, "nvidia.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return specDir
}

func mapLookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}
