package reporter

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"
)

// procMemTotal reads MemTotal from the real /proc/meminfo, in bytes.
func procMemTotal(t *testing.T) uint64 {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Skipf("no /proc/meminfo: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb * 1024
		}
	}
	t.Fatal("no MemTotal in /proc/meminfo")
	return 0
}

// procProcessors counts the processors the real /proc/cpuinfo lists.
func procProcessors(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skipf("no /proc/cpuinfo: %v", err)
	}
	n := 0
	for line := range strings.Lines(string(b)) {
		if k, _, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "processor" {
			n++
		}
	}
	return n
}

func TestCollectReadsTheRealHost(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "var/lib/containerd")
	r, err := New(Options{Runtime: newFakeRuntime(), DataDir: dataDir, AgentID: "h"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.Collect(context.Background())
	if err != nil {
		t.Fatalf("Collect: %v (warnings %v)", err, rep.Warnings)
	}
	if want := procMemTotal(t); rep.Memory.TotalBytes != want {
		t.Errorf("memory total = %d, want /proc/meminfo's %d", rep.Memory.TotalBytes, want)
	}
	if rep.Memory.AvailableBytes == 0 || rep.Memory.AvailableBytes > rep.Memory.TotalBytes {
		t.Errorf("memory available = %d of %d", rep.Memory.AvailableBytes, rep.Memory.TotalBytes)
	}
	if n := rep.CPU.Threads; n != goruntime.NumCPU() && n != procProcessors(t) {
		t.Errorf("threads = %d, want %d (NumCPU) or %d (cpuinfo)", n, goruntime.NumCPU(), procProcessors(t))
	}
	if rep.CPU.Cores < 1 || rep.CPU.Cores > rep.CPU.Threads || rep.CPU.Architecture != goruntime.GOARCH {
		t.Errorf("cpu = %+v", rep.CPU)
	}
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	if hasAVX2 := strings.Contains(string(cpuinfo), " avx2"); rep.CPU.AVX2 != hasAVX2 {
		t.Errorf("avx2 = %v, cpuinfo says %v", rep.CPU.AVX2, hasAVX2)
	}
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if rep.Hostname != host || rep.OS.Kernel != strings.TrimSpace(string(kernel)) {
		t.Errorf("hostname %q kernel %q, want %q %q", rep.Hostname, rep.OS.Kernel, host, kernel)
	}
	if rep.Disk.Path != filepath.Dir(filepath.Dir(filepath.Dir(dataDir))) || rep.Disk.TotalBytes == 0 ||
		rep.Disk.FreeBytes > rep.Disk.TotalBytes {
		t.Errorf("disk = %+v, want the temp dir measured", rep.Disk)
	}
	if rep.Runtime.Name != "containerd" || rep.GPUs == nil || len(rep.GPUs) != 0 {
		t.Errorf("runtime %+v gpus %+v", rep.Runtime, rep.GPUs)
	}
}

// x86CPUInfo is a cpuinfo of sockets × cores × 2 hyperthreads.
func x86CPUInfo(sockets, cores int, flags string) string {
	var b strings.Builder
	n := 0
	for range 2 { // each core's two hyperthreads
		for s := range sockets {
			for c := range cores {
				fmt.Fprintf(&b, "processor\t: %d\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"+
					"physical id\t: %d\nsiblings\t: %d\ncore id\t\t: %d\ncpu cores\t: %d\nflags\t\t: %s\n\n",
					n, s, cores*2, c, cores, flags)
				n++
			}
		}
	}
	return b.String()
}

const arm64CPUInfo = `processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU part	: 0xd0c

processor	: 1
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU part	: 0xd0c
`

func TestParseCPUInfo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   string
		want CPUInfo
	}{
		{"x86 two sockets with hyperthreads", x86CPUInfo(2, 4, "fpu sse2 avx avx2 avx512f avx512bw"),
			CPUInfo{Model: "AMD EPYC 7763 64-Core Processor", Sockets: 2, Cores: 8, Threads: 16, AVX: true, AVX2: true, AVX512F: true}},
		{"x86 without avx512", x86CPUInfo(1, 2, "fpu sse2 avx avx2 avx512_vnni"),
			CPUInfo{Model: "AMD EPYC 7763 64-Core Processor", Sockets: 1, Cores: 2, Threads: 4, AVX: true, AVX2: true}},
		{"x86 without avx", x86CPUInfo(1, 1, "fpu sse2 sse4_2"),
			CPUInfo{Model: "AMD EPYC 7763 64-Core Processor", Sockets: 1, Cores: 1, Threads: 2}},
		{"arm64", arm64CPUInfo, CPUInfo{Sockets: 1, Cores: 2, Threads: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			writeFile(t, root, "proc/cpuinfo", tc.in)
			got, err := readCPU(root)
			if err != nil {
				t.Fatal(err)
			}
			tc.want.Architecture = goruntime.GOARCH
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestCollectFromFixtures(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeFile(t, root, "proc/cpuinfo", x86CPUInfo(1, 2, "avx avx2"))
	writeFile(t, root, "proc/meminfo", "MemTotal:       16318504 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\n")
	writeFile(t, root, "proc/sys/kernel/hostname", "gpu-box-17\n")
	writeFile(t, root, "proc/sys/kernel/osrelease", "6.8.0-45-generic\n")
	writeFile(t, root, "etc/os-release", "NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nPRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\n# comment\n")
	r, err := New(Options{Runtime: newFakeRuntime(), Root: root, DataDir: root, Version: "9", AgentID: "h"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Hostname != "gpu-box-17" || rep.AgentVersion != "9" {
		t.Errorf("hostname %q version %q", rep.Hostname, rep.AgentVersion)
	}
	if want := (OSInfo{Name: "Ubuntu 22.04.4 LTS", ID: "ubuntu", VersionID: "22.04", Kernel: "6.8.0-45-generic"}); rep.OS != want {
		t.Errorf("os = %+v, want %+v", rep.OS, want)
	}
	if want := (MemoryInfo{TotalBytes: 16318504 * 1024, AvailableBytes: 12000000 * 1024}); rep.Memory != want {
		t.Errorf("memory = %+v, want %+v", rep.Memory, want)
	}
	if rep.CPU.Threads != 4 || rep.CPU.Cores != 2 || !rep.CPU.AVX2 || rep.CPU.AVX512F {
		t.Errorf("cpu = %+v", rep.CPU)
	}
}

func TestCollectReportsWhatItCannotRead(t *testing.T) {
	t.Parallel()
	r, err := New(Options{Runtime: newFakeRuntime(), Root: t.TempDir(), AgentID: "h"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.Collect(context.Background())
	if err == nil || len(rep.Warnings) == 0 {
		t.Fatalf("Collect from an empty root: err %v, warnings %v", err, rep.Warnings)
	}
	// What could be read is still there.
	if rep.AgentID != "h" || rep.Runtime.Name != "containerd" || rep.CPU.Threads != goruntime.NumCPU() {
		t.Errorf("report = %+v", rep)
	}
}

func TestParseOSRelease(t *testing.T) {
	t.Parallel()
	got := parseOSRelease([]byte("A=plain\nB=\"double \\\"quoted\\\"\"\nC='single'\n\n# D=no\nE\n"))
	want := map[string]string{"A": "plain", "B": `double "quoted"`, "C": "single"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

func writeFile(t *testing.T, root, name, content string) {
	t.Helper()
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
