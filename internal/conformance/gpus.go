package conformance

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/gpualloc"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// FakeNodeMajor is a character-device major reserved for local use, with
// no driver behind it: the fake /dev/nvidiaN nodes are of this major, N the
// minor.
const FakeNodeMajor = 240

// GPUHost is a fake 8-GPU server: go-nvml's dgxa100 inventory, mknod'ed
// nodes standing for its GPUs, and a CDI spec naming each GPU by UUID that
// maps its node to /dev/nvidiaN.
type GPUHost struct {
	Inv *gpu.Inventory
	// Spec is the CDI spec (JSON); a back end puts it where its daemon
	// reads CDI specs.
	Spec []byte
	kind runtime.ReservationKind
}

// NewGPUHost makes the fake GPUs.
func NewGPUHost(t *testing.T) *GPUHost {
	t.Helper()
	inv, err := gpu.Open(dgxa100.New(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	nodes := t.TempDir()
	var devices []map[string]any
	for _, g := range inv.GPUs() {
		node := filepath.Join(nodes, fmt.Sprintf("nvidia%d", g.MinorNumber))
		if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(unix.Mkdev(FakeNodeMajor, uint32(g.MinorNumber)))); err != nil {
			t.Fatalf("mknod %s: %v", node, err)
		}
		devices = append(devices, map[string]any{
			"name": g.UUID,
			"containerEdits": map[string]any{
				"deviceNodes": []map[string]any{{"path": fmt.Sprintf("/dev/nvidia%d", g.MinorNumber), "hostPath": node, "type": "c",
					"major": FakeNodeMajor, "minor": g.MinorNumber}},
			},
		})
	}
	spec := map[string]any{"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu", "devices": devices,
		"containerEdits": map[string]any{"env": []string{"FAKE_NVIDIA_DRIVER=550.54.15"}}}
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	return &GPUHost{Inv: inv, Spec: b, kind: lifecycle.GPUReservations{Alloc: gpualloc.New(gpu.NewAllocator(inv))}}
}

// Kind is the GPU reservation kind over the host's inventory.
func (h *GPUHost) Kind() runtime.ReservationKind { return h.kind }

// WriteSpec writes the CDI spec into dir as name, removed with the test.
func (h *GPUHost) WriteSpec(t *testing.T, dir, name string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, h.Spec, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(p) })
}

// minors maps each GPU's UUID to its minor number.
func (h *GPUHost) minors() map[string]int {
	out := map[string]int{}
	for _, g := range h.Inv.GPUs() {
		out[g.UUID] = g.MinorNumber
	}
	return out
}

// Restarted is the same host as an agent started again sees it: the same
// GPUs, and an allocator that knows nothing until it restores.
func (h *GPUHost) Restarted() *GPUHost {
	return &GPUHost{Inv: h.Inv, Spec: h.Spec, kind: lifecycle.GPUReservations{Alloc: gpualloc.New(gpu.NewAllocator(h.Inv))}}
}
