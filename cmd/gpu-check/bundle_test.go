package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/internal/testenv"
)

// bundleLimit is what may travel to the GPU test machine with the
// checkout, less a margin for the checkout itself.
const bundleLimit = 50 * 1000 * 1000

// TestBundle builds the bundle as an operator does, checks its size, then
// runs it as the GPU machine will, through deploy/gpu-check.sh from the
// .tar.xz, here in dry-run mode with the container stage on: the bundle's
// own containerd, runc, CDI hook, loader and C library start a rental on
// the fake GPU nodes through the agent's start path. Slow (it builds
// containerd and runc): skipped with -short.
func TestBundle(t *testing.T) {
	testenv.Require(t, "gcc") // and slow: it builds containerd and runc
	dir := t.TempDir()
	archive := filepath.Join(dir, "gpu-check.tar.xz")
	build := exec.Command("bash", "../../deploy/build-gpu-check.sh", archive)
	var stdout, stderr bytes.Buffer
	build.Stdout, build.Stderr = &stdout, &stderr
	if err := build.Run(); err != nil {
		t.Fatalf("build the bundle: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	fi, err := os.Stat(archive)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bundle: %d bytes", fi.Size())
	if fi.Size() > bundleLimit {
		t.Fatalf("bundle is %d bytes, over the %d limit", fi.Size(), bundleLimit)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if cmd := lines[len(lines)-1]; !strings.HasPrefix(cmd, "bash deploy/gpu-check.sh ") || !strings.Contains(cmd, `--out "$OUT"`) {
		t.Errorf("the build does not end with the command to run: %q", cmd)
	}

	out := filepath.Join(dir, "out")
	check := exec.Command("bash", "../../deploy/gpu-check.sh", archive, "--out", out, "--mock", "--container")
	res, err := check.CombinedOutput()
	t.Logf("gpu-check.sh output:\n%s", res)
	if err != nil {
		t.Fatalf("the bundle's dry run failed: %v", err)
	}
	r := readReport(t, filepath.Join(out, "report.json"))
	for _, s := range r.Stages {
		if s.Name == "mig" && s.Status == statusSkipped {
			continue // the dgxh100 mock has no GPU in MIG mode
		}
		if s.Status != statusPass {
			t.Errorf("stage %d %s: %s %s%s", s.Number, s.Name, s.Status, s.Error, s.Reason)
		}
	}
	var c struct {
		Nodes []string       `json:"gpu_device_nodes"`
		SMI   map[string]any `json:"nvidia_smi"`
	}
	stageDetails(t, r.Stages[4], &c)
	if len(c.Nodes) != 1 || c.Nodes[0] != "nvidia0" {
		t.Errorf("the rental saw GPU nodes %v, want [nvidia0]", c.Nodes)
	}
	// The fake nvidia-smi is the check's own dynamically linked binary:
	// it ran on the image's C library and saw one GPU.
	if gpus, _ := c.SMI["gpus"].([]any); len(gpus) != 1 || !strings.Contains(gpus[0].(string), mockUUID(0)) {
		t.Errorf("nvidia-smi in the rental: %v", c.SMI)
	}
	if log, err := os.ReadFile(filepath.Join(out, "gpu-check.log")); err != nil || !strings.Contains(string(log), r.Summary) {
		t.Errorf("gpu-check.log lacks the summary (%v)", err)
	}
}
