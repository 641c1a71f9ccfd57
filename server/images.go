package server

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
)

// ImageManager is what the image routes ask of the runtime;
// *lifecycle.Lifecycle provides it.
type ImageManager interface {
	Images(ctx context.Context) ([]runtime.Image, error)
	PullImage(ctx context.Context, p lifecycle.ImagePull) (img runtime.Image, pulling bool, err error)
	RemoveImage(ctx context.Context, ref string) error
}

var _ ImageManager = (*lifecycle.Lifecycle)(nil)

// errNoImages answers the image routes of an agent whose runtime manages no
// images.
var errNoImages = &statusError{status: http.StatusNotImplemented, msg: "images unavailable: this runtime does not manage images"}

// ImagePullRequest is the body of POST /images/pull.
type ImagePullRequest struct {
	Image        string               `json:"image"`
	RegistryAuth *RegistryAuthRequest `json:"registry_auth,omitempty"`
	// PinHours keeps the image from image GC for this many hours after
	// it is present; 0: not pinned.
	PinHours int `json:"pin_hours,omitempty"`
}

func (r *ImagePullRequest) validate() error {
	if err := validateImage(r.Image); err != nil {
		return err
	}
	if err := r.RegistryAuth.validate(); err != nil {
		return err
	}
	if r.PinHours < 0 || r.PinHours > lifecycle.MaxPinHours {
		return fieldErr("pin_hours", "must be between 0 and %d", lifecycle.MaxPinHours)
	}
	return nil
}

// ImageRemoveRequest is the body of DELETE /images.
type ImageRemoveRequest struct {
	Image string `json:"image"`
}

// ImageInfo is one image of GET /images.
type ImageInfo struct {
	Image       string     `json:"image"`
	Digest      string     `json:"digest"`
	SizeBytes   int64      `json:"size_bytes"`
	LastUsed    time.Time  `json:"last_used"`
	PinnedUntil *time.Time `json:"pinned_until"`
	InUse       bool       `json:"in_use"`
}

// ImageList answers GET /images.
type ImageList struct {
	Images []ImageInfo `json:"images"`
}

// ImagePullResponse answers POST /images/pull: status "pulling" (202) or
// "present" (200, with the image's digest and size).
type ImagePullResponse struct {
	Image     string `json:"image"`
	Status    string `json:"status"`
	Digest    string `json:"digest,omitempty"`
	SizeBytes int64  `json:"size_bytes,omitempty"`
}

// ImageRemoveResponse answers DELETE /images.
type ImageRemoveResponse struct {
	Image  string `json:"image"`
	Status string `json:"status"`
}

func imageInfo(img runtime.Image) ImageInfo {
	info := ImageInfo{Image: img.Ref, Digest: img.Digest, SizeBytes: img.SizeBytes, LastUsed: img.LastUsed.UTC(), InUse: img.InUse}
	if !img.PinnedUntil.IsZero() {
		t := img.PinnedUntil.UTC()
		info.PinnedUntil = &t
	}
	return info
}

func (s *Server) imageManager() (ImageManager, error) {
	im, ok := s.rt.(ImageManager)
	if !ok {
		return nil, errNoImages
	}
	return im, nil
}

// listImages answers every image the runtime holds for rentals, most
// recently used first.
func (s *Server) listImages(c *echo.Context) error {
	im, err := s.imageManager()
	if err != nil {
		return err
	}
	imgs, err := im.Images(c.Request().Context())
	if err != nil {
		return err
	}
	out := ImageList{Images: make([]ImageInfo, 0, len(imgs))}
	for _, img := range imgs {
		out.Images = append(out.Images, imageInfo(img))
	}
	return c.JSON(http.StatusOK, out)
}

// pullImage pulls an image ahead of any start, detached from the request.
func (s *Server) pullImage(c *echo.Context) error {
	im, err := s.imageManager()
	if err != nil {
		return err
	}
	var req ImagePullRequest
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	ctx := c.Request().Context()
	ref := normalizeImage(req.Image)
	img, pulling, err := im.PullImage(ctx, lifecycle.ImagePull{
		Ref:          ref,
		RegistryAuth: req.RegistryAuth.toRuntime(),
		Pin:          time.Duration(req.PinHours) * time.Hour,
	})
	if err != nil {
		return err
	}
	if pulling {
		return c.JSON(http.StatusAccepted, ImagePullResponse{Image: ref, Status: "pulling"})
	}
	return c.JSON(http.StatusOK, ImagePullResponse{Image: ref, Status: "present", Digest: img.Digest, SizeBytes: img.SizeBytes})
}

// removeImage removes an image no rental uses.
func (s *Server) removeImage(c *echo.Context) error {
	im, err := s.imageManager()
	if err != nil {
		return err
	}
	var req ImageRemoveRequest
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if err := validateImage(req.Image); err != nil {
		return err
	}
	ref := normalizeImage(req.Image)
	if err := im.RemoveImage(c.Request().Context(), ref); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, ImageRemoveResponse{Image: ref, Status: "removed"})
}
