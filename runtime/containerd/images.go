package containerd

import (
	"context"
	"fmt"
	"sort"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

// labelPinnedUntil keeps an image from image GC until the time it holds
// (RFC 3339).
const labelPinnedUntil = "host-agent.io/pinned-until"

var _ runtime.ImageStore = (*Runtime)(nil)

// Images implements runtime.ImageStore: the namespace's images, most
// recently used first.
func (r *Runtime) Images(ctx context.Context) ([]runtime.Image, error) {
	ctx = r.nsCtx(ctx)
	cs, err := r.client.ContainerService().List(ctx)
	if err != nil {
		return nil, convertErr(err)
	}
	inUse := map[string]bool{}
	for _, c := range cs {
		inUse[c.Image] = true
	}
	imgs, err := r.client.ImageService().List(ctx)
	if err != nil {
		return nil, convertErr(err)
	}
	out := make([]runtime.Image, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, r.describeImage(ctx, img, inUse[img.Name]))
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].LastUsed.After(out[j].LastUsed) })
	return out, nil
}

func (r *Runtime) describeImage(ctx context.Context, img images.Image, inUse bool) runtime.Image {
	out := runtime.Image{
		Ref:            img.Name,
		Digest:         img.Target.Digest.String(),
		LastUsed:       imageLastUsed(img),
		PinnedUntil:    imagePinnedUntil(img),
		InUse:          inUse,
		PulledWithAuth: img.Labels[labelPulledWithAuth] != "",
	}
	if size, err := containerd.NewImage(r.client, img).Size(ctx); err == nil {
		out.SizeBytes = size
	} else {
		r.log.Debug("image size", "image", img.Name, "error", err)
	}
	return out
}

func imageLastUsed(img images.Image) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, img.Labels[labelLastUsed]); err == nil {
		return t
	}
	return img.CreatedAt
}

func imagePinnedUntil(img images.Image) time.Time {
	t, err := time.Parse(time.RFC3339Nano, img.Labels[labelPinnedUntil])
	if err != nil {
		return time.Time{}
	}
	return t
}

// PullImage implements runtime.ImageStore with a start's pull.
func (r *Runtime) PullImage(ctx context.Context, ref string, auth *runtime.RegistryAuth, progress func(events.PullProgress)) (runtime.Image, error) {
	ctx = r.nsCtx(ctx)
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return runtime.Image{}, fmt.Errorf("parse image %q: %w: %w", ref, errdefs.ErrInvalidArgument, err)
	}
	ref = named.String()
	if _, err := r.fetchImage(ctx, runtime.InstanceSpec{Image: ref, RegistryAuth: auth}, func(string) {}, progress); err != nil {
		return runtime.Image{}, err
	}
	img, err := r.client.ImageService().Get(ctx, ref)
	if err != nil {
		return runtime.Image{}, convertErr(err)
	}
	return r.describeImage(ctx, img, false), nil
}

// PinImage implements runtime.ImageStore with a label.
func (r *Runtime) PinImage(ctx context.Context, ref string, until time.Time) error {
	ctx = r.nsCtx(ctx)
	is := r.client.ImageService()
	img, err := is.Get(ctx, ref)
	if err != nil {
		return convertErr(err)
	}
	if img.Labels == nil {
		img.Labels = map[string]string{}
	}
	img.Labels[labelPinnedUntil] = until.UTC().Format(time.RFC3339Nano)
	if _, err := is.Update(ctx, img, "labels."+labelPinnedUntil); err != nil {
		return convertErr(err)
	}
	return nil
}

// RemoveImage implements runtime.ImageStore. Like image GC, it runs while
// no start is between its image look-up and its container's creation.
func (r *Runtime) RemoveImage(ctx context.Context, ref string) error {
	ctx = r.nsCtx(ctx)
	r.imageMu.Lock()
	defer r.imageMu.Unlock()
	if _, err := r.client.ImageService().Get(ctx, ref); err != nil {
		return convertErr(err)
	}
	cs, err := r.client.ContainerService().List(ctx)
	if err != nil {
		return convertErr(err)
	}
	for _, c := range cs {
		if c.Image == ref {
			return fmt.Errorf("image %s is used by container %s: %w", ref, c.ID, errdefs.ErrConflict)
		}
	}
	if err := r.client.ImageService().Delete(ctx, ref, images.SynchronousDelete()); err != nil {
		return convertErr(err)
	}
	return nil
}
