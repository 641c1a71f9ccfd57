package containerd

import (
	"context"
	"sort"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime/backend"
)

// labelLastUsed is when a start last used an image (RFC 3339); image GC
// removes the least recently used first.
const labelLastUsed = "host-agent.io/last-used"

// touchImage records that a start uses the image now.
func (r *Runtime) touchImage(ctx context.Context, name string) {
	is := r.client.ImageService()
	img, err := is.Get(ctx, name)
	if err != nil {
		return
	}
	if img.Labels == nil {
		img.Labels = map[string]string{}
	}
	img.Labels[labelLastUsed] = time.Now().UTC().Format(time.RFC3339Nano)
	if _, err := is.Update(ctx, img, "labels."+labelLastUsed); err != nil {
		r.log.Debug("record image use", "image", name, "error", err)
	}
}

// CollectImages removes images no container of the namespace uses and no
// unexpired pin keeps (labelPinnedUntil), least
// recently used first, while free() says the disk has less than minFree
// bytes free. Starts do not run their image look-up and container creation
// while an image is being removed (imageMu), so an image a start has
// chosen is never removed under it. It returns the images removed.
func (r *Runtime) CollectImages(ctx context.Context, minFree uint64, free func() (uint64, error)) ([]string, error) {
	ctx = r.nsCtx(ctx)
	return backend.CollectImages(minFree, free, func() (string, error) { return r.removeLeastRecentlyUsed(ctx) }, r.log)
}

func (r *Runtime) removeLeastRecentlyUsed(ctx context.Context) (string, error) {
	r.imageMu.Lock()
	defer r.imageMu.Unlock()
	cs, err := r.client.ContainerService().List(ctx)
	if err != nil {
		return "", convertErr(err)
	}
	inUse := map[string]bool{}
	for _, c := range cs {
		inUse[c.Image] = true
	}
	imgs, err := r.client.ImageService().List(ctx)
	if err != nil {
		return "", convertErr(err)
	}
	var candidates []images.Image
	now := time.Now()
	for _, img := range imgs {
		if !inUse[img.Name] && !imagePinnedUntil(img).After(now) {
			candidates = append(candidates, img)
		}
	}
	if len(candidates) == 0 {
		return "", nil
	}
	sort.Slice(candidates, func(i, j int) bool { return imageLastUsed(candidates[i]).Before(imageLastUsed(candidates[j])) })
	name := candidates[0].Name
	if err := r.client.ImageService().Delete(ctx, name, images.SynchronousDelete()); err != nil && !errdefs.IsNotFound(err) {
		return "", convertErr(err)
	}
	return name, nil
}

// collectImagesLoop runs CollectImages every interval against the free
// space at the runtime's root.
func (r *Runtime) collectImagesLoop(ctx context.Context) {
	backend.CollectImagesEvery(ctx, r.opts.ImageGCInterval, r.log, func(ctx context.Context) error {
		_, err := r.CollectImages(ctx, r.opts.ImageGCMinFreeBytes, r.opts.FreeSpace)
		return err
	})
}
