package gpuevents

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime/events"
)

type recorder struct{ got []events.Event }

func (r *recorder) Publish(e events.Event) { r.got = append(r.got, e) }

// TestEventsReachTheHubUnchanged: a GPU event arrives as the hub's event of
// the same type, and its fault as the same JSON the event stream has always
// carried.
func TestEventsReachTheHubUnchanged(t *testing.T) {
	t.Parallel()
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	fault := &gpu.Fault{GPU: "GPU-1", Index: 3, Kind: gpu.FaultXid, Xid: 79, Meaning: "GPU has fallen off the bus", Benched: true, Time: at}
	r := &recorder{}
	pub := To(r)
	pub.Publish(gpu.Event{Type: gpu.EventHealth, InstanceID: "a", Status: gpu.StatusUnhealthy, GPU: "GPU-1", Message: "m1"})
	pub.Publish(gpu.Event{Type: gpu.EventFault, InstanceID: "a", GPU: "GPU-1", Message: "m2", Fault: fault})
	if len(r.got) != 2 {
		t.Fatalf("published %d events, want 2", len(r.got))
	}
	if e := r.got[0]; e.Type != events.TypeGPUHealth || e.Status != gpu.StatusUnhealthy || e.InstanceID != "a" || e.GPU != "GPU-1" || e.Message != "m1" || e.Fault != nil {
		t.Errorf("health event = %+v", e)
	}
	e := r.got[1]
	if e.Type != events.TypeInstanceGPUFault || e.Status != "" || e.Message != "m2" || e.Fault == nil {
		t.Fatalf("fault event = %+v", e)
	}
	got, _ := json.Marshal(e.Fault)
	want := `{"gpu":"GPU-1","index":3,"kind":"xid","xid":79,"meaning":"GPU has fallen off the bus","benched":true,"time":"2025-01-02T03:04:05Z"}`
	if string(got) != want {
		t.Errorf("fault JSON = %s, want %s", got, want)
	}
	if gpu.FaultECC != events.FaultECC || gpu.FaultXid != events.FaultXid {
		t.Error("fault kinds differ between gpu and events")
	}
}
