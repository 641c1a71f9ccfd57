package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/containerd/errdefs"
	"github.com/labstack/echo/v5"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/lifecycle"
	"github.com/host-agent/host-agent/runtime/volume"
)

// VolumeStore is what the volume routes ask of the host's volumes;
// *volume.Store provides it.
type VolumeStore interface {
	Create(ctx context.Context, spec volume.Spec) (v volume.Volume, created bool, err error)
	List(ctx context.Context) []volume.Volume
	Delete(ctx context.Context, name string) error
}

var _ VolumeStore = (*volume.Store)(nil)

// errNoVolumes answers the volume routes of an agent built without volumes.
var errNoVolumes = &statusError{status: http.StatusNotImplemented, msg: "volumes unavailable: this agent keeps no volumes"}

// VolumeCreateRequest is the body of POST /volumes.
type VolumeCreateRequest struct {
	Name   string `json:"name"`
	Owner  string `json:"owner"`
	SizeGB int64  `json:"size_gb"`
}

// VolumeInfo is one volume of GET /volumes, and the answer of POST
// /volumes.
type VolumeInfo struct {
	Name      string    `json:"name"`
	Owner     string    `json:"owner"`
	SizeGB    int64     `json:"size_gb"`
	UsedBytes int64     `json:"used_bytes"`
	CreatedAt time.Time `json:"created_at"`
	// AttachedTo is the instance holding the volume, or null.
	AttachedTo *string `json:"attached_to"`
}

// VolumeList answers GET /volumes.
type VolumeList struct {
	Volumes []VolumeInfo `json:"volumes"`
}

// VolumeDeleteResponse answers DELETE /volumes/{name}.
type VolumeDeleteResponse struct {
	Message string `json:"message"`
	Name    string `json:"name"`
}

// VolumeAttachRequest attaches a volume to a rental (a start's volumes).
type VolumeAttachRequest struct {
	Name      string `json:"name"`
	Owner     string `json:"owner"`
	MountPath string `json:"mount_path"`
}

// validateVolumes checks a start's volumes, naming the field at fault.
func validateVolumes(vols []VolumeAttachRequest) error {
	for i, v := range vols {
		if err := volume.ValidateName(v.Name); err != nil {
			return fieldErr(fmt.Sprintf("volumes[%d].name", i), "%v", err)
		}
		if err := volume.ValidateOwner(v.Owner); err != nil {
			return fieldErr(fmt.Sprintf("volumes[%d].owner", i), "%v", err)
		}
	}
	if field, err := runtime.ValidateVolumeRequests(volumeRequests(vols)); err != nil {
		return fieldErr(field, "%v", err)
	}
	return nil
}

func volumeRequests(vols []VolumeAttachRequest) []runtime.VolumeRequest {
	if len(vols) == 0 {
		return nil
	}
	out := make([]runtime.VolumeRequest, len(vols))
	for i, v := range vols {
		out[i] = runtime.VolumeRequest{Name: v.Name, Owner: v.Owner, MountPath: v.MountPath}
	}
	return out
}

func volumeInfo(v volume.Volume) VolumeInfo {
	out := VolumeInfo{Name: v.Name, Owner: v.Owner, SizeGB: v.SizeGB, UsedBytes: v.UsedBytes, CreatedAt: v.CreatedAt}
	if v.AttachedTo != "" {
		id := v.AttachedTo
		out.AttachedTo = &id
	}
	return out
}

// createVolume makes a volume: 201 when made, 200 when the same volume
// (name, owner and size) already exists, 409 when the name is taken by
// another owner or size, or the disk cannot hold it. A drained host makes
// none: a volume is data the platform would place on a host that is
// going away.
func (s *Server) createVolume(c *echo.Context) error {
	if s.volumes == nil {
		return errNoVolumes
	}
	var req VolumeCreateRequest
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	spec := volume.Spec{Name: req.Name, Owner: req.Owner, SizeGB: req.SizeGB}
	if err := spec.Validate(); err != nil {
		return asFieldError(err)
	}
	ctx := c.Request().Context()
	st, err := s.drainStatus(ctx)
	if err != nil {
		return err
	}
	if st.Draining {
		return &runtime.DrainingError{Reason: st.Reason}
	}
	v, created, err := s.volumes.Create(ctx, spec)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	v.UsedBytes = 0
	for _, got := range s.volumes.List(ctx) {
		if got.Name == v.Name {
			v = got
		}
	}
	return c.JSON(status, volumeInfo(v))
}

func (s *Server) listVolumes(c *echo.Context) error {
	if s.volumes == nil {
		return errNoVolumes
	}
	vols := s.volumes.List(c.Request().Context())
	out := VolumeList{Volumes: make([]VolumeInfo, 0, len(vols))}
	for _, v := range vols {
		out.Volumes = append(out.Volumes, volumeInfo(v))
	}
	return c.JSON(http.StatusOK, out)
}

// deleteVolume removes a volume and its data: 404 when unknown, 409 while
// a rental holds it.
func (s *Server) deleteVolume(c *echo.Context) error {
	if s.volumes == nil {
		return errNoVolumes
	}
	name := c.Param("name")
	if err := volume.ValidateName(name); err != nil {
		return fieldErr("name", "%v", err)
	}
	ctx := c.Request().Context()
	// Which rentals hold volumes is read back from the runtime at start:
	// until it has been, a held volume would look free, and its data be
	// wiped under the rental.
	if r, ok := s.rt.(restorer); ok {
		if err := r.Restore(ctx); err != nil {
			return fmt.Errorf("volume attachments not read back from the runtime yet: %w: %w", errdefs.ErrUnavailable, err)
		}
	}
	if err := s.volumes.Delete(ctx, name); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, VolumeDeleteResponse{Message: "Volume deleted", Name: name})
}

// restorer is a runtime that reads reservations back from the containers
// once, before it may be trusted; *lifecycle.Lifecycle is one.
type restorer interface {
	Restore(ctx context.Context) error
}

var _ restorer = (*lifecycle.Lifecycle)(nil)

// asFieldError turns the store's refusal of a field into the API's.
func asFieldError(err error) error {
	var ve *volume.Error
	if errors.As(err, &ve) {
		return &FieldError{Field: ve.Field, Msg: ve.Msg}
	}
	return err
}
