package numa

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/host-agent/host-agent/runtime"
)

// fakeSys writes a two-node host: node 0 with CPUs 0-3 and 8 GiB, node 1
// with CPUs 4-7 and 8 GiB.
func fakeSys(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for id, cpus := range []string{"0-3", "4-7"} {
		d := filepath.Join(root, "devices/system/node", fmt.Sprintf("node%d", id))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "cpulist"), []byte(cpus+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "meminfo"), []byte(fmt.Sprintf("Node %d MemTotal:       8388608 kB\nNode %d MemFree: 1 kB\n", id, id)), 0o644)
	}
	return root
}

// gpuNodes puts GPUs a and b on node 0, c on node 1; any other is unknown.
func gpuNodes(uuid string) int {
	switch uuid {
	case "a", "b":
		return 0
	case "c":
		return 1
	}
	return -1
}

func spec(id string, cpus float64, mem int64, gpus ...string) *runtime.InstanceSpec {
	s := &runtime.InstanceSpec{ID: id, Limits: runtime.Resources{CPUs: cpus, MemoryMB: mem}}
	for _, g := range gpus {
		s.GPUs = append(s.GPUs, runtime.GPU{UUID: g})
	}
	return s
}

func TestReadNodes(t *testing.T) {
	t.Parallel()
	nodes, err := ReadNodes(fakeSys(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || nodes[1] != (Node{ID: 1, CPUList: "4-7", CPUs: 4, MemoryMB: 8192}) {
		t.Errorf("nodes = %+v", nodes)
	}
	if n, err := countCPUs("0-15,32-47,64"); n != 33 || err != nil {
		t.Errorf("countCPUs = %d, %v", n, err)
	}
}

// TestAlignAndRestore: rentals on one node's GPUs are pinned there while
// their share fits, the rest run unpinned, and a restart rebuilds what each
// node has left from the labels.
func TestAlignAndRestore(t *testing.T) {
	t.Parallel()
	nodes, err := ReadNodes(fakeSys(t))
	if err != nil {
		t.Fatal(err)
	}
	r := New(nodes, gpuNodes, nil)
	steps := []struct {
		spec       *runtime.InstanceSpec
		cpus, mems string // "" when not pinned
	}{
		{spec("cpu-only", 1, 1024), "", ""},
		{spec("two", 2, 2048, "a", "b"), "0-3", "0"},
		{spec("spans", 1, 1024, "a", "c"), "", ""},
		{spec("unknown", 1, 1024, "x"), "", ""},
		{spec("too-big", 3, 1024, "a"), "", ""}, // 2 of node 0's 4 CPUs are taken
		{spec("fits", 2, 6144, "b"), "0-3", "0"},
		{spec("node-full", 1, 1024, "a"), "", ""}, // node 0's CPUs are all taken
		{spec("too-much-memory", 1, 8193, "c"), "", ""},
		{spec("other", 4, 8192, "c"), "4-7", "1"},
	}
	for _, s := range steps {
		labels, err := r.Reserve(s.spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.spec.Limits; got.CPUSetCPUs != s.cpus || got.CPUSetMems != s.mems || (labels == nil) != (s.cpus == "") {
			t.Errorf("%s: cpuset %q mems %q labels %v, want %q %q", s.spec.ID, got.CPUSetCPUs, got.CPUSetMems, labels, s.cpus, s.mems)
		}
	}

	// A restarted agent: same holdings from the labels, and node 0 is as
	// full as before.
	again := New(nodes, gpuNodes, nil)
	for id, labels := range r.Holdings() {
		if err := again.Restore(id, labels); err != nil {
			t.Fatal(err)
		}
	}
	if !maps.EqualFunc(again.Holdings(), r.Holdings(), maps.Equal) {
		t.Errorf("restored holdings %v, want %v", again.Holdings(), r.Holdings())
	}
	if labels, _ := again.Reserve(spec("after-restart", 1, 512, "a")); labels != nil {
		t.Errorf("node 0 has room after restart: %v", labels)
	}
	again.Release("two")
	s := spec("after-release", 1, 512, "a")
	if labels, _ := again.Reserve(s); labels == nil || s.Limits.CPUSetCPUs != "0-3" {
		t.Errorf("node 0 full after a release: %v", labels)
	}
}
