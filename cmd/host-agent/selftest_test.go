package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime/selftest"
)

// freeRange finds two consecutive loopback-free TCP ports for
// HOST_PORT_RANGE.
func freeRange(t *testing.T) string {
	t.Helper()
	for i := 0; i < 50; i++ {
		ln, err := net.Listen("tcp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if p >= 65535 {
			continue
		}
		if ln2, err := net.Listen("tcp", fmt.Sprintf(":%d", p+1)); err == nil {
			ln2.Close()
			return fmt.Sprintf("%d-%d", p, p+1)
		}
	}
	t.Fatal("no two consecutive free ports")
	return ""
}

func runSelftestBinary(t *testing.T, bin string, env ...string) (int, selftest.Report, string) {
	t.Helper()
	cmd := exec.Command(bin, "selftest", "--json")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Dir = t.TempDir()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var rep selftest.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("selftest --json output: %v\n%s\n%s", err, out, stderr.String())
	}
	return code, rep, string(out)
}

func result(rep selftest.Report, name string) selftest.Result {
	for _, r := range rep.Results {
		if r.Name == name {
			return r
		}
	}
	return selftest.Result{}
}

// TestSelftest runs `host-agent selftest --json` against a real containerd
// and the CNI plugins of this host: it passes, with the GPU checks skipped
// for want of a driver, and fails, saying how to fix it, with containerd
// stopped, a broken CDI spec or the CNI plugins missing.
func TestSelftest(t *testing.T) {
	w := newWorld(t)
	cdiDir := t.TempDir()
	base := []string{
		"CONTAINERD_ADDRESS=" + w.ctd.Address, "STATE_DIR=" + t.TempDir(),
		"SELFTEST_IMAGE=" + w.image, "CDI_SPEC_DIRS=" + cdiDir,
		"CONTAINERD_ROOT=" + t.TempDir(), "DISK_RESERVE_GB=1", "HOST_PORT_RANGE=" + freeRange(t),
		"CNI_PLUGIN_DIRS=/usr/lib/cni:/opt/cni/bin",
	}

	code, rep, out := runSelftestBinary(t, w.bin, base...)
	if code != 0 || !rep.Passed {
		t.Fatalf("self-test on a working host: exit %d\n%s", code, out)
	}
	for _, name := range []string{"runtime", "runc", "cni-plugins", "cdi-specs", "disk", "host-ports", "test-rental"} {
		if r := result(rep, name); r.Status != selftest.OK {
			t.Errorf("%s: %+v, want ok", name, r)
		}
	}
	for _, name := range []string{"nvidia-driver", "pcie-link", "gpu-health"} {
		if r := result(rep, name); r.Status != selftest.Skip || r.Detail != "no NVIDIA driver" {
			t.Errorf("%s: %+v, want skipped with reason \"no NVIDIA driver\"", name, r)
		}
	}

	t.Run("broken CDI spec", func(t *testing.T) {
		bad := filepath.Join(cdiDir, "broken.yaml")
		if err := os.WriteFile(bad, []byte("cdiVersion: \"0.6.0\"\nkind: nvidia.com/gpu\ndevices: [ {name: \n"), 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(bad)
		code, rep, out := runSelftestBinary(t, w.bin, base...)
		r := result(rep, "cdi-specs")
		if code == 0 || rep.Passed || r.Status != selftest.Fail || !strings.Contains(r.Detail, bad) || r.Fix == "" {
			t.Fatalf("with a broken spec: exit %d, cdi-specs %+v\n%s", code, r, out)
		}
	})
	t.Run("CNI plugins missing", func(t *testing.T) {
		env := append(append([]string{}, base...), "CNI_PLUGIN_DIRS="+t.TempDir())
		code, rep, out := runSelftestBinary(t, w.bin, env...)
		r := result(rep, "cni-plugins")
		if code == 0 || r.Status != selftest.Fail || !strings.Contains(r.Detail, "bridge") || !strings.Contains(r.Fix, "containernetworking-plugins") {
			t.Fatalf("without CNI plugins: exit %d, cni-plugins %+v\n%s", code, r, out)
		}
	})
	t.Run("containerd stopped", func(t *testing.T) {
		if err := w.ctd.Stop(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := w.ctd.Start(); err != nil {
				t.Error(err)
			}
		}()
		code, rep, out := runSelftestBinary(t, w.bin, base...)
		r := result(rep, "runtime")
		if code == 0 || r.Status != selftest.Fail || !strings.Contains(r.Detail, "does not answer") || !strings.Contains(r.Fix, "start containerd") {
			t.Fatalf("with containerd stopped: exit %d, runtime %+v\n%s", code, r, out)
		}
	})
}

// TestSelftestTable checks the human-readable form names each failure's fix.
func TestSelftestTable(t *testing.T) {
	t.Parallel()
	rep := selftest.Report{Results: []selftest.Result{
		{Name: "runtime", Status: selftest.Fail, Detail: "containerd does not answer", Fix: "start containerd"},
		{Name: "nvidia-driver", Status: selftest.Skip, Detail: "no NVIDIA driver"},
	}}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"runtime", "FAIL", "fix: start containerd", "SKIP", "no NVIDIA driver", "self-test FAILED"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
