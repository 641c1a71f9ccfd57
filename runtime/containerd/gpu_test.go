package containerd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/cdi"
	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/gpualloc"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// fakeNodeMajor is a character-device major number reserved for local use,
// with no driver behind it: a node of it opens nothing. The test's fake
// /dev/nvidiaN nodes are of this major, with N as the minor.
const fakeNodeMajor = 240

// gpuHost is a fake 8-GPU server: go-nvml's dgxa100 inventory, and a CDI
// spec naming each GPU by UUID that maps a harmless device node to
// /dev/nvidiaN, with an env entry and a read-only mount, as nvidia-ctk's
// specs do.
type gpuHost struct {
	inv      *gpu.Inventory
	specDir  string
	injector *cdi.Injector
}

func newGPUHost(t *testing.T, hooks []map[string]any) *gpuHost {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	inv, err := gpu.Open(dgxa100.New(), logger)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	nodes := filepath.Join(dir, "dev")
	specDir := filepath.Join(dir, "cdi")
	for _, d := range []string{nodes, specDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lib := filepath.Join(dir, "libnvidia-fake.so.1")
	if err := os.WriteFile(lib, []byte("not a library"), 0o644); err != nil {
		t.Fatal(err)
	}
	var devices []map[string]any
	for _, g := range inv.GPUs() {
		node := filepath.Join(nodes, fmt.Sprintf("nvidia%d", g.MinorNumber))
		if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(unix.Mkdev(fakeNodeMajor, uint32(g.MinorNumber)))); err != nil {
			t.Fatalf("mknod %s: %v", node, err)
		}
		devices = append(devices, map[string]any{
			"name": g.UUID,
			"containerEdits": map[string]any{
				"deviceNodes": []map[string]any{{"path": fmt.Sprintf("/dev/nvidia%d", g.MinorNumber), "hostPath": node}},
			},
		})
	}
	edits := map[string]any{
		"env":    []string{"FAKE_NVIDIA_DRIVER=550.54.15"},
		"mounts": []map[string]any{{"hostPath": lib, "containerPath": "/usr/lib/libnvidia-fake.so.1", "options": []string{"ro", "nosuid", "nodev", "bind"}}},
	}
	if hooks != nil {
		edits["hooks"] = hooks
	}
	spec := map[string]any{"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu", "devices": devices, "containerEdits": edits}
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(specDir, "nvidia.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	injector, err := cdi.New(cdi.Config{SpecDirs: []string{specDir}, Logger: logger, DeviceMajors: []int64{fakeNodeMajor}, Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	return &gpuHost{inv: inv, specDir: specDir, injector: injector}
}

// agent builds what cmd/host-agent builds: the containerd back end with CDI
// injection, wrapped in GPU allocation.
func (h *gpuHost) agent(t *testing.T, ns string, rec *conformance.Recorder) *agent {
	t.Helper()
	r, err := New(Options{Address: daemon.Address, Namespace: ns, AgentID: "gpu-test", LogDir: t.TempDir(), Events: rec, Devices: h.injector,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return withLifecycle(t, r, rec, lifecycle.GPUReservations{Alloc: gpualloc.New(gpu.NewAllocator(h.inv))})
}

// nvidiaNodes lists the /dev/nvidiaN entries a container printed.
func nvidiaNodes(out string) []string {
	var nodes []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "nvidia") {
			nodes = append(nodes, "/dev/"+line)
		}
	}
	slices.Sort(nodes)
	return nodes
}

func TestGPUsInjectedExactlyThroughCDI(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	host := newGPUHost(t, nil)
	ns, rec := testNamespace(t), conformance.NewRecorder()
	g := host.agent(t, ns, rec)

	// The image sets NVIDIA_VISIBLE_DEVICES=all, and so does the request.
	spec := payloadSpec("two-gpus", "ls", "/dev", "env", "sleep", "inf")
	spec.GPURequest = runtime.GPURequest{Count: 2}
	spec.Env = map[string]string{"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "all"}
	inst, err := g.Start(ctx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(inst.GPUs) != 2 {
		t.Fatalf("instance holds %v, want 2 GPUs", inst.GPUs)
	}
	var want []string
	minor := map[string]int{}
	for _, d := range host.inv.GPUs() {
		minor[d.UUID] = d.MinorNumber
	}
	for _, d := range inst.GPUs {
		want = append(want, fmt.Sprintf("/dev/nvidia%d", minor[d.UUID]))
	}
	slices.Sort(want)

	var logs string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, _, _ := g.Logs(ctx(t), "two-gpus", 1000)
		if logs = string(b); strings.Contains(logs, "PATH=") {
			break
		}
	}
	if got := nvidiaNodes(logs); !slices.Equal(got, want) {
		t.Fatalf("container sees %v, want exactly %v\n%s", got, want, logs)
	}
	for _, env := range []string{"FAKE_NVIDIA_DRIVER=550.54.15", "NVIDIA_VISIBLE_DEVICES=void"} {
		if !strings.Contains(logs, env+"\n") {
			t.Errorf("container env lacks %s:\n%s", env, logs)
		}
	}

	// An operator sees the UUIDs in the container's labels.
	out, err := exec.Command("ctr", "--address", daemon.Address, "-n", ns, "containers", "info", "two-gpus").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr containers info: %v\n%s", err, out)
	}
	for _, d := range inst.GPUs {
		if !strings.Contains(string(out), d.UUID) {
			t.Errorf("ctr containers info does not show %s", d.UUID)
		}
	}

	// A CPU rental on the same host gets no GPU node at all.
	if _, err := g.Start(ctx(t), payloadSpec("cpu-only", "ls", "/dev", "sleep", "inf")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, _, _ := g.Logs(ctx(t), "cpu-only", 1000)
		if logs = string(b); strings.Contains(logs, "null") {
			break
		}
	}
	if got := nvidiaNodes(logs); len(got) != 0 {
		t.Fatalf("a CPU rental sees %v", got)
	}

	// Terminating frees the GPUs: all 8 can be taken again.
	if err := g.Terminate(ctx(t), "two-gpus", time.Second); err != nil {
		t.Fatal(err)
	}
	all := payloadSpec("all-eight", "sleep", "inf")
	all.GPURequest = runtime.GPURequest{Count: 8}
	if inst, err := g.Start(ctx(t), all); err != nil || len(inst.GPUs) != 8 {
		t.Fatalf("start with all 8 GPUs after a release: %v %v", inst.GPUs, err)
	}
}

func TestUnsafeCDIHookRefused(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	// A hook without an explicit env would inherit the runtime's, which is
	// how CVE-2025-23266 loaded a library from the image.
	host := newGPUHost(t, []map[string]any{{"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk", "args": []string{"nvidia-ctk", "hook"}}})
	ns, rec := testNamespace(t), conformance.NewRecorder()
	g := host.agent(t, ns, rec)
	spec := payloadSpec("hooked", "sleep", "inf")
	spec.GPURequest = runtime.GPURequest{Count: 1}
	_, err := g.Start(ctx(t), spec)
	var se *runtime.StepError
	if !errors.As(err, &se) || se.Step != runtime.StepCreate || !strings.Contains(err.Error(), "hook") {
		t.Fatalf("start with an unsafe hook: %v, want a create-step refusal naming the hook", err)
	}
	assertNothingLeft(t, ns)
	if free, total := countFree(host); free != total {
		t.Fatalf("%d of %d GPUs free after the refusal", free, total)
	}
}

func countFree(h *gpuHost) (free, total int) {
	for _, g := range h.inv.GPUs() {
		total++
		if g.HeldBy == "" {
			free++
		}
	}
	return free, total
}
