package docker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/client"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
)

var _ runtime.ImageStore = (*Runtime)(nil)

// imageRecord is what the agent keeps of an image in imagesDir.
type imageRecord struct {
	Ref         string    `json:"ref"`
	LastUsed    time.Time `json:"last_used,omitzero"`
	PinnedUntil time.Time `json:"pinned_until,omitzero"`
}

func (r *Runtime) imageRecordPath(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return filepath.Join(r.opts.StateDir, imagesDir, hex.EncodeToString(sum[:])+".json")
}

func (r *Runtime) readImageRecord(ref string) imageRecord {
	rec := imageRecord{Ref: ref}
	b, err := os.ReadFile(r.imageRecordPath(ref))
	if err != nil {
		return rec
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		r.log.Warn("unreadable image record", "image", ref, "error", err)
	}
	return rec
}

func (r *Runtime) writeImageRecord(rec imageRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	path := r.imageRecordPath(rec.Ref)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("record image %s: %w", rec.Ref, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("record image %s: %w", rec.Ref, err)
	}
	return nil
}

// touchImage records that a start uses the image now.
func (r *Runtime) touchImage(ref string) {
	r.imageRecMu.Lock()
	defer r.imageRecMu.Unlock()
	rec := r.readImageRecord(ref)
	rec.LastUsed = time.Now().UTC()
	if err := r.writeImageRecord(rec); err != nil {
		r.log.Debug("record image use", "image", ref, "error", err)
	}
}

// Images implements runtime.ImageStore: every tagged image of the daemon,
// most recently used first.
func (r *Runtime) Images(ctx context.Context) ([]runtime.Image, error) {
	list, err := r.client.ImageList(ctx, client.ImageListOptions{})
	if err != nil {
		return nil, convertErr(err)
	}
	inUse, err := r.imagesInUse(ctx)
	if err != nil {
		return nil, err
	}
	var out []runtime.Image
	for _, s := range list.Items {
		for _, tag := range s.RepoTags {
			named, err := reference.ParseDockerRef(tag)
			if err != nil {
				continue // "<none>:<none>"
			}
			ref := named.String()
			rec := r.readImageRecord(ref)
			img := runtime.Image{
				Ref:            ref,
				Digest:         imageDigest(named, s.RepoDigests, s.ID),
				SizeBytes:      s.Size,
				LastUsed:       rec.LastUsed,
				PinnedUntil:    rec.PinnedUntil,
				InUse:          inUse[s.ID],
				PulledWithAuth: r.pulledWithAuth(ref),
			}
			if img.LastUsed.IsZero() {
				img.LastUsed = time.Unix(s.Created, 0).UTC()
			}
			out = append(out, img)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].LastUsed.After(out[j].LastUsed) })
	return out, nil
}

// imageDigest is the manifest digest the daemon recorded for the image's
// repository, or its ID (the configuration's digest) when it has none (an
// image built or loaded here).
func imageDigest(named reference.Named, repoDigests []string, id string) string {
	for _, rd := range repoDigests {
		d, err := reference.ParseDockerRef(rd)
		if err != nil {
			continue
		}
		if c, ok := d.(reference.Canonical); ok && c.Name() == named.Name() {
			return c.Digest().String()
		}
	}
	return id
}

// imagesInUse are the IDs of images some container of the daemon uses.
func (r *Runtime) imagesInUse(ctx context.Context) (map[string]bool, error) {
	cs, err := r.client.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return nil, convertErr(err)
	}
	inUse := map[string]bool{}
	for _, c := range cs.Items {
		inUse[c.ImageID] = true
	}
	return inUse, nil
}

// PullImage implements runtime.ImageStore with a start's pull: an image
// pulled with credentials is pulled again with the request's, so that the
// registry decides.
func (r *Runtime) PullImage(ctx context.Context, ref string, auth *runtime.RegistryAuth, progress func(events.PullProgress)) (runtime.Image, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return runtime.Image{}, fmt.Errorf("parse image %q: %w: %w", ref, errdefs.ErrInvalidArgument, err)
	}
	ref = named.String()
	for {
		_, err := r.client.ImageInspect(ctx, ref)
		if err == nil && !r.pulledWithAuth(ref) {
			break
		}
		if err != nil && !errdefs.IsNotFound(err) {
			return runtime.Image{}, convertErr(err)
		}
		decide, err := r.sharedPull(ctx, ref, reference.Domain(named), auth, progress)
		if err != nil {
			return runtime.Image{}, err
		}
		if !decide {
			r.touchImage(ref)
			break
		}
	}
	imgs, err := r.Images(ctx)
	if err != nil {
		return runtime.Image{}, err
	}
	for _, img := range imgs {
		if img.Ref == ref {
			return img, nil
		}
	}
	return runtime.Image{}, fmt.Errorf("image %s is not listed after its pull: %w", ref, errdefs.ErrNotFound)
}

// PinImage implements runtime.ImageStore with the image's record.
func (r *Runtime) PinImage(ctx context.Context, ref string, until time.Time) error {
	if _, err := r.client.ImageInspect(ctx, ref); err != nil {
		return convertErr(err)
	}
	r.imageRecMu.Lock()
	defer r.imageRecMu.Unlock()
	rec := r.readImageRecord(ref)
	rec.PinnedUntil = until.UTC()
	return r.writeImageRecord(rec)
}

// RemoveImage implements runtime.ImageStore: the reference is untagged,
// and the image removed with its last tag.
func (r *Runtime) RemoveImage(ctx context.Context, ref string) error {
	r.imageMu.Lock()
	defer r.imageMu.Unlock()
	img, err := r.client.ImageInspect(ctx, ref)
	if err != nil {
		return convertErr(err)
	}
	inUse, err := r.imagesInUse(ctx)
	if err != nil {
		return err
	}
	if inUse[img.ID] {
		return fmt.Errorf("image %s is used by a container: %w", ref, errdefs.ErrConflict)
	}
	if _, err := r.client.ImageRemove(ctx, ref, client.ImageRemoveOptions{}); err != nil {
		err = convertErr(err)
		if !errdefs.IsNotFound(err) && strings.Contains(err.Error(), "being used") {
			return fmt.Errorf("image %s: %w: %w", ref, errdefs.ErrConflict, err)
		}
		return err
	}
	r.imageRecMu.Lock()
	defer r.imageRecMu.Unlock()
	for _, p := range []string{r.imageRecordPath(ref), r.authPullMarker(ref)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("remove image record", "image", ref, "error", err)
		}
	}
	return nil
}
