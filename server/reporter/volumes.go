package reporter

import (
	"context"

	"github.com/host-agent/host-agent/runtime/volume"
)

// MaxReportedVolumes bounds the volumes a registration or heartbeat carries.
const MaxReportedVolumes = 1024

// VolumeLister lists the host's volumes; *volume.Store is one.
type VolumeLister interface {
	List(ctx context.Context) []volume.Volume
}

var _ VolumeLister = (*volume.Store)(nil)

// VolumeRef is one volume a registration or heartbeat carries, so that the
// server can place an owner's next rental where its data is.
type VolumeRef struct {
	Name      string `json:"name"`
	Owner     string `json:"owner"`
	SizeGB    int64  `json:"size_gb"`
	UsedBytes int64  `json:"used_bytes"`
	// AttachedTo is the instance holding it, or null.
	AttachedTo *string `json:"attached_to"`
}

// volumeRefs lists the host's volumes by name, at most
// MaxReportedVolumes; nil when the agent keeps none.
func (r *Reporter) volumeRefs(ctx context.Context) []VolumeRef {
	if r.opts.Volumes == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	defer cancel()
	vols := r.opts.Volumes.List(ctx)
	out := make([]VolumeRef, 0, min(len(vols), MaxReportedVolumes))
	for _, v := range vols {
		if len(out) == MaxReportedVolumes {
			break
		}
		ref := VolumeRef{Name: v.Name, Owner: v.Owner, SizeGB: v.SizeGB, UsedBytes: v.UsedBytes}
		if v.AttachedTo != "" {
			id := v.AttachedTo
			ref.AttachedTo = &id
		}
		out = append(out, ref)
	}
	return out
}
