package reporter

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/runtime"
)

// imageRuntime is a runtime holding images.
type imageRuntime struct {
	*fakeRuntime
	images []runtime.Image
}

func (r *imageRuntime) Images(context.Context) ([]runtime.Image, error) { return r.images, nil }

// Registrations and heartbeats carry the runtime's images, most recently
// used first, at most MaxReportedImages of them.
func TestReportsCarryTheImageInventory(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, testInstances()...)
	rt := &imageRuntime{fakeRuntime: h.rt}
	now := time.Now()
	for i := range MaxReportedImages + 10 {
		rt.images = append(rt.images, runtime.Image{
			Ref:       fmt.Sprintf("registry.example/img:%d", i),
			Digest:    "sha256:" + strings.Repeat(fmt.Sprint(i%10), 64),
			SizeBytes: int64(1000 + i),
			LastUsed:  now.Add(-time.Duration(i) * time.Minute),
		})
	}
	opts := h.options()
	opts.Runtime = rt
	h.run(opts, h.heartbeatsAtLeast(1))
	calls := h.server.recorded()
	reg, hb := calls[0].register(t), calls[1].heartbeat(t)
	for what, imgs := range map[string][]ImageRef{"registration": reg.Images, "heartbeat": hb.Images} {
		if len(imgs) != MaxReportedImages {
			t.Errorf("%s carries %d images, want %d", what, len(imgs), MaxReportedImages)
			continue
		}
		if want := (ImageRef{Image: "registry.example/img:0", Digest: rt.images[0].Digest, SizeBytes: 1000}); imgs[0] != want {
			t.Errorf("%s's first image %+v, want the most recently used %+v", what, imgs[0], want)
		}
		if last := imgs[len(imgs)-1]; last.Image != fmt.Sprintf("registry.example/img:%d", MaxReportedImages-1) {
			t.Errorf("%s's last image %+v", what, last)
		}
	}
	if !strings.Contains(string(calls[1].Body), `"images":[{"image":"registry.example/img:0"`) {
		t.Errorf("heartbeat body: %.300s", calls[1].Body)
	}
}
