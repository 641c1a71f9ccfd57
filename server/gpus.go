package server

import (
	"net/http"

	"github.com/labstack/echo/v5"

	"github.com/host-agent/host-agent/gpu"
)

// GPUListResponse answers GET /gpus.
type GPUListResponse struct {
	DriverVersion     string    `json:"driver_version"`
	CUDADriverVersion string    `json:"cuda_driver_version"`
	GPUs              []gpu.GPU `json:"gpus"`
}

// listGPUs shows the host's GPUs with their health and holders. A host
// without GPUs (or without NVML) answers an empty list.
func (s *Server) listGPUs(c *echo.Context) error {
	resp := GPUListResponse{GPUs: []gpu.GPU{}}
	if s.gpus != nil {
		resp.DriverVersion = s.gpus.DriverVersion()
		resp.CUDADriverVersion = s.gpus.CUDADriverVersion()
		if g := s.gpus.GPUs(); g != nil {
			resp.GPUs = g
		}
	}
	return c.JSON(http.StatusOK, resp)
}
