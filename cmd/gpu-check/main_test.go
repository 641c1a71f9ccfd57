package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/internal/testenv"
)

// buildCheck builds this command as the bundle does, into dir.
func buildCheck(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "gpu-check")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "CGO_CFLAGS=-Wno-deprecated-declarations")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build gpu-check: %v\n%s", err, out)
	}
	return bin
}

func readReport(t *testing.T, path string) Report {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no JSON report: %v", err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("JSON report: %v\n%s", err, b)
	}
	return r
}

// stageDetails decodes one stage's details into v.
func stageDetails(t *testing.T, s StageResult, v any) {
	t.Helper()
	b, _ := json.Marshal(s.Details)
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("stage %d details: %v", s.Number, err)
	}
}

// TestDryRunOnMock runs the built binary with --mock, as CI does between
// draws of a real GPU: stages 1-4 must pass on the dgxh100 mock and a fake
// driver root, and stages 5 and 6 must say why they were skipped.
func TestDryRunOnMock(t *testing.T) {
	testenv.Require(t) // mknod for the fake device nodes needs root
	dir := t.TempDir()
	bin := buildCheck(t, dir)
	jsonPath := filepath.Join(dir, "report.json")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "--mock", "--json", jsonPath)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("dry run failed: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	r := readReport(t, jsonPath)
	if !r.Mock || !r.Passed || len(r.Stages) != 6 {
		t.Fatalf("report: mock %v passed %v, %d stages\n%s", r.Mock, r.Passed, len(r.Stages), stdout.String())
	}
	for i, want := range []string{"nvml", "cdi", "health", "allocation"} {
		if s := r.Stages[i]; s.Name != want || s.Status != statusPass {
			t.Errorf("stage %d: %s %s (%s), want %s pass", i+1, s.Name, s.Status, s.Error, want)
		}
	}
	if s := r.Stages[4]; s.Name != "container" || s.Status != statusSkipped || !strings.Contains(s.Reason, "mock") {
		t.Errorf("stage 5: %s %s reason %q, want container skipped because of the mock", s.Name, s.Status, s.Reason)
	}
	if s := r.Stages[5]; s.Name != "mig" || s.Status != statusSkipped || !strings.Contains(s.Reason, "no GPU has MIG enabled") ||
		!strings.Contains(s.Reason, "GPU 0 MIG disabled") {
		t.Errorf("stage 6: %s %s reason %q, want mig skipped because no GPU has MIG enabled", s.Name, s.Status, s.Reason)
	}

	// Each stage's result is printed before the next stage starts, and
	// the last line is the summary.
	out := stdout.String()
	last := 0
	for n := 1; n <= 6; n++ {
		begin := strings.Index(out, "== stage "+string(rune('0'+n)))
		end := strings.Index(out, "-- stage "+string(rune('0'+n)))
		if begin < last || end < begin {
			t.Fatalf("stage %d not printed in order (begin %d, result %d, previous %d):\n%s", n, begin, end, last, out)
		}
		last = end
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if got := lines[len(lines)-1]; got != r.Summary || !strings.HasPrefix(got, "gpu-check PASS: 4/6 stages passed") {
		t.Errorf("last line %q, report summary %q", got, r.Summary)
	}

	// What each stage found, as the real run reports it.
	var inv struct {
		Driver string      `json:"driver_version"`
		GPUs   []GPUReport `json:"gpus"`
	}
	stageDetails(t, r.Stages[0], &inv)
	if inv.Driver != "550.54.15" || len(inv.GPUs) != 8 {
		t.Fatalf("inventory: driver %q, %d GPUs", inv.Driver, len(inv.GPUs))
	}
	g := inv.GPUs[0]
	if g.UUID != mockUUID(0) || g.PCIeGenMax != 5 || g.PCIeWidthMax != 16 || g.ECCMode != "enabled" || g.PowerLimitWatts != 700 || g.TemperatureC != 33 || g.MemoryTotalMiB == 0 {
		t.Errorf("GPU 0 described as %+v", g)
	}
	var cdiDetails map[string]json.RawMessage
	stageDetails(t, r.Stages[1], &cdiDetails)
	var devices []string
	_ = json.Unmarshal(cdiDetails["devices"], &devices)
	if len(devices) != 8 || devices[0] != "nvidia.com/gpu="+mockUUID(0) {
		t.Errorf("CDI devices %v", devices)
	}
	var edits Edits
	if err := json.Unmarshal(cdiDetails["edits_for_"+mockUUID(0)], &edits); err != nil {
		t.Fatalf("edits: %v", err)
	}
	gpuNodes := 0
	for _, d := range edits.Devices {
		if strings.Contains(d, "(c 195:") && !strings.Contains(d, "nvidiactl") {
			gpuNodes++
			if !strings.HasPrefix(d, "/dev/nvidia0 ") {
				t.Errorf("injected GPU node %s, want only /dev/nvidia0", d)
			}
		}
	}
	if gpuNodes != 1 {
		t.Errorf("edits inject %d GPU nodes, want 1: %v", gpuNodes, edits.Devices)
	}
	var alloc struct {
		Second map[string]string `json:"second_request"`
	}
	stageDetails(t, r.Stages[3], &alloc)
	for _, k := range []string{"by_uuid", "by_count"} {
		if !strings.HasPrefix(alloc.Second[k], "409") {
			t.Errorf("second request %s: %q, want a 409", k, alloc.Second[k])
		}
	}
}

// TestDryRunFailsWithoutDriver shows the check can fail: on a driver root
// without NVML, stage 1 fails, the rest are skipped, and the exit status
// and summary say so.
func TestDryRunFailsWithoutDriver(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run([]string{"--driver-root", t.TempDir(), "--work", filepath.Join(dir, "work"), "--json", filepath.Join(dir, "r.json")}, &stdout, &stderr)
	if code == 0 {
		t.Fatalf("exit 0 without a driver:\n%s", stdout.String())
	}
	r := readReport(t, filepath.Join(dir, "r.json"))
	if r.Passed || r.Stages[0].Status != statusFail || !strings.Contains(r.Stages[0].Error, "libnvidia-ml.so.1") {
		t.Fatalf("stage 1: %+v", r.Stages[0])
	}
	for _, s := range r.Stages[1:] {
		if s.Status != statusSkipped {
			t.Errorf("stage %d %s: %s, want skipped", s.Number, s.Name, s.Status)
		}
	}
	if !strings.HasPrefix(r.Summary, "gpu-check FAIL: 0/6") {
		t.Errorf("summary %q", r.Summary)
	}
}

// TestDriverRoot pins where NVML is looked for: the flag, then
// NVIDIA_DRIVER_ROOT, and the library found under that root in the
// layouts nvcdi knows (lib64 as on GKE-style hosts).
func TestDriverRoot(t *testing.T) {
	root := t.TempDir()
	lib := filepath.Join(root, "lib64", "libnvidia-ml.so.1")
	if err := os.MkdirAll(filepath.Dir(lib), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := nvmlLibrary(root); got != lib {
		t.Errorf("nvmlLibrary(%s) = %q, want %q", root, got, lib)
	}
	if got := nvmlLibrary(t.TempDir()); got != "" {
		t.Errorf("nvmlLibrary(empty root) = %q", got)
	}
	t.Setenv("NVIDIA_DRIVER_ROOT", root)
	if got, why := driverRoot(""); got != root || why != "NVIDIA_DRIVER_ROOT" {
		t.Errorf("driverRoot with NVIDIA_DRIVER_ROOT = %s (%s)", got, why)
	}
	if got, why := driverRoot("/opt/driver/"); got != "/opt/driver" || why != "--driver-root" {
		t.Errorf("driverRoot(flag) = %s (%s)", got, why)
	}
	if got := devRoot(root); got != "/" {
		t.Errorf("devRoot without dev/nvidiactl = %s, want /", got)
	}
}

// TestNoTestEnvironmentInBinary keeps the test environment (and its
// in-process registry) out of the binary that ships in the bundle.
func TestNoTestEnvironmentInBinary(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", ".", "./probe").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, " ")
		if strings.HasSuffix(pkg, "/internal/testenv") || strings.Contains(pkg, "go-containerregistry/pkg/registry") {
			t.Errorf("gpu-check depends on %s", pkg)
		}
		// The agent's own packages never link the testing package (a
		// dependency may: go-cni does).
		if strings.HasPrefix(pkg, "github.com/host-agent/host-agent/") && slices.Contains(strings.Fields(imports), "testing") {
			t.Errorf("gpu-check's dependency %s imports testing", pkg)
		}
	}
}
