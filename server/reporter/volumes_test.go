package reporter

import (
	"context"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime/volume"
)

type fakeVolumes []volume.Volume

func (f fakeVolumes) List(context.Context) []volume.Volume { return f }

func TestReportsCarryTheVolumes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, testInstances()...)
	opts := h.options()
	opts.Volumes = fakeVolumes{
		{Name: "ds", Owner: "tenant-7", SizeGB: 10, UsedBytes: 4096, AttachedTo: "i-1"},
		{Name: "idle", Owner: "tenant-9", SizeGB: 1, UsedBytes: 0},
	}
	h.run(opts, h.heartbeatsAtLeast(1))
	calls := h.server.recorded()
	reg, hb := calls[0].register(t), calls[1].heartbeat(t)
	for what, vols := range map[string][]VolumeRef{"registration": reg.Volumes, "heartbeat": hb.Volumes} {
		if len(vols) != 2 || vols[0].Name != "ds" || vols[0].Owner != "tenant-7" || vols[0].SizeGB != 10 ||
			vols[0].UsedBytes != 4096 || vols[0].AttachedTo == nil || *vols[0].AttachedTo != "i-1" || vols[1].AttachedTo != nil {
			t.Errorf("%s carries %+v", what, vols)
		}
	}
	if !strings.Contains(string(calls[1].Body), `"volumes":[{"name":"ds","owner":"tenant-7","size_gb":10,"used_bytes":4096,"attached_to":"i-1"},{"name":"idle","owner":"tenant-9","size_gb":1,"used_bytes":0,"attached_to":null}]`) {
		t.Errorf("heartbeat body: %.2000s", calls[1].Body)
	}
}
