package server

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/server/reporter"
)

// fakeHost is a HostReporter answering report and err.
type fakeHost struct {
	report reporter.HostReport
	err    error
	calls  int
}

func (f *fakeHost) Collect(context.Context) (reporter.HostReport, error) {
	f.calls++
	return f.report, f.err
}

func testHostReport() reporter.HostReport {
	return reporter.HostReport{
		AgentID:      "agent-1",
		AgentVersion: "1.4.0",
		Hostname:     "gpu-box-17",
		OS:           reporter.OSInfo{Name: "Ubuntu 22.04.4 LTS", ID: "ubuntu", VersionID: "22.04", Kernel: "6.8.0-45-generic"},
		CPU: reporter.CPUInfo{Model: "AMD EPYC 7763 64-Core Processor", Architecture: "amd64",
			Sockets: 2, Cores: 128, Threads: 256, AVX: true, AVX2: true},
		Memory:       reporter.MemoryInfo{TotalBytes: 1081172992000, AvailableBytes: 1003182080000},
		Disk:         reporter.DiskInfo{Path: "/var/lib/containerd", TotalBytes: 3840755982336, FreeBytes: 3521507110912},
		Runtime:      reporter.RuntimeInfo{Name: "containerd", Version: "v2.4.2", Namespace: "rentals"},
		CDIAvailable: true,
		GPUs: []gpu.GPU{{Index: 0, UUID: "GPU-8f6c", Name: "NVIDIA H100 80GB HBM3", MemoryTotalMiB: 81559,
			MIGMode: gpu.MIGDisabled, Healthy: true, HeldBy: "tenant-1"}},
		DriverVersion: "550.54.15",
		CUDAVersion:   "12.4",
		PublicURL:     "https://gpu-box-17.example.net:8080",
		CollectedAt:   time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func TestHostReport(t *testing.T) {
	t.Parallel()
	host := &fakeHost{report: testHostReport()}
	ts := newTestServer(t, &fakeRuntime{}, func(o *Options) { o.Host = host })
	rec := ts.do(t, http.MethodGet, "/host", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	if strings.Contains(rec.Body.String(), `"warnings"`) {
		t.Errorf("a complete report names warnings: %s", rec.Body)
	}
	var got reporter.HostReport
	decodeInto(t, rec, &got)
	if want := testHostReport(); !reflect.DeepEqual(got, want) {
		t.Errorf("GET /host = %+v\nwant %+v", got, want)
	}
	if host.calls != 1 {
		t.Errorf("Collect called %d times, want 1", host.calls)
	}
}

// A report that could be read only in part is still served, with its
// warnings; the error is logged, not answered.
func TestHostReportIncomplete(t *testing.T) {
	t.Parallel()
	report := testHostReport()
	report.Disk = reporter.DiskInfo{}
	report.Warnings = []string{"disk: statfs /var/lib/containerd: permission denied"}
	host := &fakeHost{report: report, err: errors.New("disk: statfs /var/lib/containerd: permission denied")}
	ts := newTestServer(t, &fakeRuntime{}, func(o *Options) { o.Host = host })
	rec := ts.do(t, http.MethodGet, "/host", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var got reporter.HostReport
	decodeInto(t, rec, &got)
	if !reflect.DeepEqual(got, report) {
		t.Errorf("GET /host = %+v\nwant %+v", got, report)
	}
	if !strings.Contains(ts.logs.String(), "host report incomplete") {
		t.Errorf("the collection error was not logged:\n%s", ts.logs)
	}
}

func TestHostReportUnconfigured(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, &fakeRuntime{})
	rec := ts.do(t, http.MethodGet, "/host", "")
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503: %s", rec.Code, rec.Body)
	}
	if body := errorBody(t, rec); !strings.Contains(body.Error, "host report unavailable") {
		t.Errorf("error %q", body.Error)
	}
}

func TestHostReportUnauthorized(t *testing.T) {
	t.Parallel()
	host := &fakeHost{report: testHostReport()}
	ts := newTestServer(t, &fakeRuntime{}, func(o *Options) { o.Host = host })
	for _, token := range []string{"", "wrong-token-0123456789"} {
		rec := ts.do(t, http.MethodGet, "/host", "", token)
		if rec.Code != http.StatusUnauthorized {
			t.Errorf("token %q: status %d, want 401", token, rec.Code)
			continue
		}
		if rec.Header().Get("WWW-Authenticate") != "Bearer" {
			t.Errorf("token %q: WWW-Authenticate %q", token, rec.Header().Get("WWW-Authenticate"))
		}
		errorBody(t, rec)
	}
	if host.calls != 0 {
		t.Errorf("Collect called %d times without a valid token", host.calls)
	}
}
