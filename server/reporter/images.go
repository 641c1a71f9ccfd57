package reporter

import (
	"context"
	"slices"

	"github.com/host-agent/host-agent/runtime"
)

// MaxReportedImages bounds the images a registration or heartbeat carries.
const MaxReportedImages = 256

// ImageLister is a Runtime that keeps images for rentals;
// *lifecycle.Lifecycle is one. Registrations and heartbeats carry its
// inventory so that the server can place a rental where its image is.
type ImageLister interface {
	Images(ctx context.Context) ([]runtime.Image, error)
}

// ImageRef is one image a registration or heartbeat carries.
type ImageRef struct {
	Image     string `json:"image"`
	Digest    string `json:"digest"`
	SizeBytes int64  `json:"size_bytes"`
}

// imageRefs reads the runtime's images, most recently used first and at
// most MaxReportedImages; nil when the runtime keeps none or they could not
// be read (the field is then left out: unknown, not "no image").
func (r *Reporter) imageRefs(ctx context.Context) []ImageRef {
	il, ok := r.opts.Runtime.(ImageLister)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	defer cancel()
	imgs, err := il.Images(ctx)
	if err != nil {
		r.logger.Warn("listing images for the report failed; sent without them", "error", err)
		return nil
	}
	imgs = slices.Clone(imgs)
	slices.SortStableFunc(imgs, func(a, b runtime.Image) int { return b.LastUsed.Compare(a.LastUsed) })
	out := make([]ImageRef, 0, min(len(imgs), MaxReportedImages))
	for _, img := range imgs {
		if len(out) == MaxReportedImages {
			break
		}
		out = append(out, ImageRef{Image: img.Ref, Digest: img.Digest, SizeBytes: img.SizeBytes})
	}
	return out
}
