package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/backend"
)

// CollectImages removes images while free() says the disk has less than
// minFree bytes free: only images a rental pulled or used (those the agent
// keeps a record of; the daemon's other images are the host's), none a
// container uses, none pinned, least recently used first. Starts do not
// run their image look-up and container creation meanwhile (imageMu). It
// returns the images removed.
func (r *Runtime) CollectImages(ctx context.Context, minFree uint64, free func() (uint64, error)) ([]string, error) {
	return backend.CollectImages(minFree, free, func() (string, error) { return r.removeLeastRecentlyUsed(ctx) }, r.log)
}

func (r *Runtime) removeLeastRecentlyUsed(ctx context.Context) (string, error) {
	r.imageMu.Lock()
	defer r.imageMu.Unlock()
	imgs, err := r.Images(ctx)
	if err != nil {
		return "", err
	}
	now := time.Now()
	var candidates []runtime.Image
	for _, img := range imgs {
		if _, err := os.Stat(r.imageRecordPath(img.Ref)); err != nil {
			continue
		}
		if !img.InUse && !img.PinnedUntil.After(now) {
			candidates = append(candidates, img)
		}
	}
	if len(candidates) == 0 {
		return "", nil
	}
	sort.SliceStable(candidates, func(i, j int) bool { return candidates[i].LastUsed.Before(candidates[j].LastUsed) })
	ref := candidates[0].Ref
	if _, err := r.client.ImageRemove(ctx, ref, client.ImageRemoveOptions{}); err != nil && !errdefs.IsNotFound(convertErr(err)) {
		return "", convertErr(err)
	}
	r.imageRecMu.Lock()
	defer r.imageRecMu.Unlock()
	for _, p := range []string{r.imageRecordPath(ref), r.authPullMarker(ref)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("remove image record", "image", ref, "error", err)
		}
	}
	return ref, nil
}

// collectImagesLoop runs CollectImages every interval.
func (r *Runtime) collectImagesLoop(ctx context.Context) {
	backend.CollectImagesEvery(ctx, r.opts.ImageGCInterval, r.log, func(ctx context.Context) error {
		_, err := r.CollectImages(ctx, r.opts.ImageGCMinFreeBytes, r.opts.FreeSpace)
		return err
	})
}

// dataRootFree is DataRootFree of the daemon's data root.
func (r *Runtime) dataRootFree() (uint64, error) {
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	info, err := r.client.Info(ctx, client.InfoOptions{})
	if err != nil {
		return 0, convertErr(err)
	}
	if info.Info.DockerRootDir == "" {
		return 0, fmt.Errorf("the daemon names no data root: %w", errdefs.ErrUnavailable)
	}
	return r.opts.DataRootFree(info.Info.DockerRootDir)
}
