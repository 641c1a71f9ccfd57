package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/containerd/errdefs"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/gpu/gpumock"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// mockGPUs is a dgxa100 whose GPU i reports utilisation 10+i %, 1+i GiB of
// framebuffer used, 30+i °C and 100+i W.
func mockGPUs(t *testing.T) *gpu.Inventory {
	t.Helper()
	srv := dgxa100.New()
	for i, d := range srv.Devices {
		d := d.(*dgxa100.Device)
		d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: uint32(10 + i), Memory: 1}, nvml.SUCCESS
		}
		d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
			m := d.MemoryInfo
			m.Used = uint64(1+i) << 30
			m.Free = m.Total - m.Used
			return m, nvml.SUCCESS
		}
		d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return uint32(30 + i), nvml.SUCCESS }
		d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return uint32(100+i) * 1000, nvml.SUCCESS }
	}
	inv, err := gpu.Open(srv, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	return inv
}

func parseMetrics(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// TestDCGMMetrics scrapes /metrics and parses it as Prometheus does: every
// GPU has dcgm-exporter's series with the mock's figures, labelled with the
// instance holding it.
func TestDCGMMetrics(t *testing.T) {
	t.Parallel()
	inv := mockGPUs(t)
	alloc := gpu.NewAllocator(inv)
	held, err := alloc.Reserve("rental-a", gpu.Request{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	holder := map[string]string{}
	for _, d := range held {
		holder[d.UUID] = "rental-a"
	}
	rt := &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) { return nil, nil }}
	ts := newTestServer(t, rt, func(o *Options) { o.GPUs = inv })
	rec := ts.do(t, http.MethodGet, "/metrics", "")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", rec.Code)
	}
	fams := parseMetrics(t, rec.Body.String())

	gpus := inv.GPUs()
	want := func(g gpu.GPU) map[string]float64 {
		i := float64(g.Index)
		total := float64(g.MemoryTotalBytes >> 20)
		return map[string]float64{
			"DCGM_FI_DEV_GPU_UTIL":    10 + i,
			"DCGM_FI_DEV_FB_USED":     (1 + i) * 1024,
			"DCGM_FI_DEV_FB_FREE":     total - (1+i)*1024,
			"DCGM_FI_DEV_GPU_TEMP":    30 + i,
			"DCGM_FI_DEV_POWER_USAGE": 100 + i,
			"DCGM_FI_DEV_XID_ERRORS":  0,
		}
	}
	for _, name := range []string{"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_XID_ERRORS"} {
		fam := fams[name]
		if fam == nil || fam.GetType() != dto.MetricType_GAUGE {
			t.Errorf("%s missing or not a gauge", name)
			continue
		}
		if len(fam.GetMetric()) != len(gpus) {
			t.Errorf("%s has %d series, want one per GPU (%d)", name, len(fam.GetMetric()), len(gpus))
		}
		seen := map[string]bool{}
		for _, m := range fam.GetMetric() {
			l := labelsOf(m)
			var g gpu.GPU
			for _, c := range gpus {
				if c.UUID == l["UUID"] {
					g = c
				}
			}
			if g.UUID == "" {
				t.Errorf("%s: series for unknown UUID %v", name, l)
				continue
			}
			seen[g.UUID] = true
			if l["gpu"] != fmt.Sprint(g.Index) || l["modelName"] != g.Name || g.Name == "" || l["instance_id"] != holder[g.UUID] || l["device"] != fmt.Sprintf("nvidia%d", g.MinorNumber) {
				t.Errorf("%s labels %v for GPU %+v (holder %q)", name, l, g, holder[g.UUID])
			}
			if got := m.GetGauge().GetValue(); got != want(g)[name] {
				t.Errorf("%s{gpu=%d} = %v, want %v", name, g.Index, got, want(g)[name])
			}
		}
		if len(seen) != len(gpus) {
			t.Errorf("%s covers %d GPUs, want %d", name, len(seen), len(gpus))
		}
	}
}

// TestStartAndPullHistograms counts starts by result, and pulls timed from
// the runtime's own events as they pass through the PullTimer.
func TestStartAndPullHistograms(t *testing.T) {
	t.Parallel()
	pulls := NewPullTimer(events.NewHub(16, nil))
	rt := &fakeRuntime{start: func(_ context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
		pulls.Publish(events.Event{Type: events.TypeInstancePulling, InstanceID: spec.ID})
		if spec.ID == "bad" {
			pulls.Publish(events.Event{Type: events.TypeInstanceFailed, InstanceID: spec.ID})
			return runtime.Instance{}, &runtime.StepError{Step: runtime.StepPull, Err: errdefs.ErrNotFound}
		}
		pulls.Publish(events.Event{Type: events.TypeInstanceCreating, InstanceID: spec.ID})
		return runtime.Instance{ID: spec.ID, Status: runtime.StatusRunning}, nil
	}, list: func(context.Context) ([]runtime.Instance, error) { return nil, nil }}
	ts := newTestServer(t, rt, func(o *Options) { o.Pulls = pulls })
	for _, id := range []string{"a", "b", "bad"} {
		ts.do(t, http.MethodPost, "/start_instance", fmt.Sprintf(`{"instance_id":%q,"image":"busybox"}`, id))
	}
	fams := parseMetrics(t, ts.do(t, http.MethodGet, "/metrics", "").Body.String())
	counts := func(name string) map[string]uint64 {
		out := map[string]uint64{}
		fam := fams[name]
		if fam == nil || fam.GetType() != dto.MetricType_HISTOGRAM {
			t.Fatalf("%s missing or not a histogram", name)
		}
		for _, m := range fam.GetMetric() {
			out[labelsOf(m)["result"]] = m.GetHistogram().GetSampleCount()
		}
		return out
	}
	if got := counts("host_agent_instance_start_duration_seconds"); got["ok"] != 2 || got["error"] != 1 {
		t.Errorf("start histogram counts = %v, want ok 2, error 1", got)
	}
	if got := counts("host_agent_image_pull_duration_seconds"); got["ok"] != 2 || got["error"] != 1 {
		t.Errorf("pull histogram counts = %v, want ok 2, error 1", got)
	}
}

// TestGPUMockMetric: a mock GPU machine's inventory is labelled so on
// /metrics, and GET /gpus names it; real GPUs have neither.
func TestGPUMockMetric(t *testing.T) {
	t.Parallel()
	rt := &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) { return nil, nil }}
	for _, mock := range []string{"", "pcie8x4090"} {
		inv := mockGPUs(t)
		if mock != "" {
			inv.MarkMock(mock)
		}
		ts := newTestServer(t, rt, func(o *Options) { o.GPUs = inv })
		fams := parseMetrics(t, ts.do(t, http.MethodGet, "/metrics", "").Body.String())
		fam := fams["host_agent_gpu_mock"]
		switch {
		case mock == "" && fam != nil:
			t.Errorf("real GPUs report host_agent_gpu_mock: %v", fam)
		case mock != "" && (fam == nil || len(fam.Metric) != 1 || labelsOf(fam.Metric[0])["machine"] != mock ||
			fam.Metric[0].GetGauge().GetValue() != 1):
			t.Errorf("host_agent_gpu_mock = %v, want machine %q 1", fam, mock)
		}
		var list GPUListResponse
		decodeInto(t, ts.do(t, http.MethodGet, "/gpus", ""), &list)
		if list.Mock != mock {
			t.Errorf("GET /gpus mock = %q, want %q", list.Mock, mock)
		}
	}
}

// TestDCGMMetricsMIG: each rented MIG device has the framebuffer series,
// with its MIG UUID, its profile and the instance holding it.
func TestDCGMMetricsMIG(t *testing.T) {
	t.Parallel()
	machine, err := gpumock.New(gpumock.DGXH100MIG)
	if err != nil {
		t.Fatal(err)
	}
	mig := machine.MIGDevices()[0]
	mig.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		total := mig.Profile.MemoryMB << 20
		return nvml.Memory{Total: total, Used: 3 << 30, Free: total - 3<<30}, nvml.SUCCESS
	}
	inv, err := gpu.Open(machine, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inv.Close() })
	inv.EnableMIGRentals()
	alloc := gpu.NewAllocator(inv)
	if _, err := alloc.Reserve("rental-mig", gpu.Request{IDs: []string{mig.UUID}}); err != nil {
		t.Fatal(err)
	}
	rt := &fakeRuntime{list: func(context.Context) ([]runtime.Instance, error) { return nil, nil }}
	ts := newTestServer(t, rt, func(o *Options) { o.GPUs = inv })
	fams := parseMetrics(t, ts.do(t, http.MethodGet, "/metrics", "").Body.String())
	found := 0
	for name, want := range map[string]float64{"DCGM_FI_DEV_FB_USED": 3 * 1024, "DCGM_FI_DEV_FB_FREE": float64(mig.Profile.MemoryMB - 3*1024)} {
		migSeries := 0
		for _, m := range fams[name].GetMetric() {
			l := labelsOf(m)
			if !strings.HasPrefix(l["UUID"], "MIG-") {
				continue
			}
			migSeries++
			if l["UUID"] != mig.UUID {
				continue
			}
			found++
			if m.GetGauge().GetValue() != want || l["instance_id"] != "rental-mig" || l["gpu"] != "0" ||
				l["modelName"] != "NVIDIA H100 80GB HBM3 MIG 3g.40gb" || l["device"] != "nvidia0" {
				t.Errorf("%s %v = %v, want %v", name, l, m.GetGauge().GetValue(), want)
			}
		}
		if migSeries != 11 {
			t.Errorf("%s: %d MIG series, want 11", name, migSeries)
		}
	}
	if found != 2 {
		t.Errorf("the held MIG device's series: %d of 2", found)
	}
}
