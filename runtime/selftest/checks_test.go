package selftest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime/disk"
)

type fakeGPUs struct {
	available bool
	gpus      []gpu.GPU
}

func (f fakeGPUs) Available() bool       { return f.available }
func (f fakeGPUs) GPUs() []gpu.GPU       { return f.gpus }
func (f fakeGPUs) DriverVersion() string { return "580.1" }

func TestGPUChecks(t *testing.T) {
	t.Parallel()
	full := gpu.GPU{Index: 0, UUID: "GPU-a", Healthy: true, PCIeGenCurrent: 5, PCIeGenMax: 5, PCIeWidthCurrent: 16, PCIeWidthMax: 16}
	narrow, idle, sick := full, full, full
	narrow.PCIeWidthCurrent = 8
	idle.PCIeGenCurrent = 1
	sick.Healthy, sick.UnhealthyReason = false, "xid 79"
	none := fakeGPUs{}
	for _, tc := range []struct {
		name  string
		check Check
		want  Status
		in    string
	}{
		{"driver absent", DriverCheck(none, 0, nil), Skip, "no NVIDIA driver"},
		{"GPUs without NVML", DriverCheck(none, 2, nil), Fail, "2 NVIDIA GPU(s) on the PCI bus"},
		{"NVML broken", DriverCheck(none, 1, errors.New("driver not loaded")), Fail, "driver not loaded"},
		{"driver present", DriverCheck(fakeGPUs{true, []gpu.GPU{full}}, 1, nil), OK, "580.1"},
		{"pcie no driver", PCIeCheck(none), Skip, "no NVIDIA driver"},
		{"pcie full", PCIeCheck(fakeGPUs{true, []gpu.GPU{full}}), OK, "full width"},
		{"pcie narrow", PCIeCheck(fakeGPUs{true, []gpu.GPU{narrow}}), Fail, "x8 of x16"},
		{"pcie idle gen", PCIeCheck(fakeGPUs{true, []gpu.GPU{idle}}), Warn, "gen 1 of 5"},
		{"health no driver", HealthCheck(none, nil), Skip, "no NVIDIA driver"},
		{"health xid", HealthCheck(fakeGPUs{true, []gpu.GPU{sick}}, nil), Fail, "xid 79"},
		{"health ok", HealthCheck(fakeGPUs{true, []gpu.GPU{full}}, nil), OK, "healthy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := tc.check.Run(context.Background())
			if r.Status != tc.want || !strings.Contains(r.Detail, tc.in) {
				t.Errorf("%+v, want %s containing %q", r, tc.want, tc.in)
			}
			if (r.Status == Fail) != (r.Fix != "") && r.Status != Warn {
				t.Errorf("a failure must say how to fix it, and only a failure or warning: %+v", r)
			}
		})
	}
}

func TestNVIDIAPCIDevices(t *testing.T) {
	t.Parallel()
	sys := t.TempDir()
	for name, vc := range map[string][2]string{
		"0000:17:00.0": {"0x10de", "0x030200"}, // NVIDIA 3D controller
		"0000:17:00.1": {"0x10de", "0x040300"}, // its audio function
		"0000:00:02.0": {"0x8086", "0x030000"}, // another vendor's VGA
	} {
		d := filepath.Join(sys, "bus/pci/devices", name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "vendor"), []byte(vc[0]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "class"), []byte(vc[1]+"\n"), 0o644)
	}
	if n := NVIDIAPCIDevices(sys); n != 1 {
		t.Errorf("NVIDIAPCIDevices = %d, want 1", n)
	}
}

func TestPortRangeCheck(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := ln.Addr().(*net.TCPAddr).Port
	r := PortRangeCheck(p, p).Run(context.Background())
	if r.Status != Fail || !strings.Contains(r.Detail, fmt.Sprint(p)) || r.Fix == "" {
		t.Errorf("a taken port: %+v", r)
	}
	if r := PortRangeCheck(10, 5).Run(context.Background()); r.Status != Fail {
		t.Errorf("an inverted range: %+v", r)
	}
}

func TestDiskCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if r := DiskCheck(dir, 1).Run(context.Background()); r.Status != OK {
		t.Errorf("1 byte wanted: %+v", r)
	}
	if r := DiskCheck(dir, 1<<62).Run(context.Background()); r.Status != Fail || r.Fix == "" {
		t.Errorf("4 EiB wanted: %+v", r)
	}
	if r := DiskCheck(filepath.Join(dir, "absent"), 1).Run(context.Background()); r.Status != Warn {
		t.Errorf("a root not visible: %+v", r)
	}
}

func TestParseVersion(t *testing.T) {
	t.Parallel()
	for in, want := range map[string][3]int{"v2.4.2": {2, 4, 2}, "1.6.20~ds1": {1, 6, 20}, "2.0": {2, 0, 0}, "x": {}} {
		if got := parseVersion(in); got != want {
			t.Errorf("parseVersion(%q) = %v, want %v", in, got, want)
		}
	}
	if !less([3]int{1, 5, 9}, minVersion["containerd"]) || less([3]int{1, 6, 20}, minVersion["containerd"]) {
		t.Error("minimum version comparison wrong")
	}
}

func TestHostAddrs(t *testing.T) {
	t.Parallel()
	var addrs []net.Addr
	for _, s := range []string{"127.0.0.1/8", "192.0.2.10/24", "10.213.0.1/16", "::1/128", "fe80::1/64", "172.17.0.1/16"} {
		ip, ipnet, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		ipnet.IP = ip
		addrs = append(addrs, ipnet)
	}
	got := HostAddrs(addrs, netip.MustParsePrefix("10.213.0.0/16"))
	want := []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("172.17.0.1")}
	if !slices.Equal(got, want) {
		t.Fatalf("HostAddrs = %v, want %v (IPv4, not loopback, not the rentals' subnet)", got, want)
	}
}

// The self-test says how disk limits are enforced for a containerd root on
// this machine's file system (no project quotas: watched, naming why), and
// fails when that cannot be found out.
func TestDiskLimitCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := DiskLimitCheck(func(context.Context) (disk.Enforcement, error) { return disk.SnapshotterEnforcement(dir), nil }).Run(context.Background())
	if ok, _ := disk.ProjectQuotas(dir); !ok && (r.Status != OK || !strings.HasPrefix(r.Detail, "watched: ") || !strings.Contains(r.Detail, dir)) {
		t.Errorf("containerd root without project quotas: %+v", r)
	}
	r = DiskLimitCheck(func(context.Context) (disk.Enforcement, error) { return disk.Enforcement{}, errors.New("daemon down") }).Run(context.Background())
	if r.Status != Fail || !strings.Contains(r.Detail, "daemon down") {
		t.Errorf("unknown enforcement: %+v", r)
	}
}
