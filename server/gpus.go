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
	// Topology is the GPUs' interconnect, as nvidia-smi topo -m shows it.
	Topology gpu.Topology `json:"topology"`
	// FreeSets says, for rentals of 1, 2, 4 and 8 GPUs, whether one can be
	// served now and how well connected its GPUs would be.
	FreeSets []gpu.BestFree `json:"free_sets"`
	// MIGDevices are the MIG devices rented as units (MIG_RENTALS); empty
	// when MIG rentals are off or no GPU is in MIG mode.
	MIGDevices []gpu.MIGDevice `json:"mig_devices"`
	// Mock names the mock GPU machine (GPU_MOCK) the GPUs are; absent on
	// real GPUs.
	Mock string `json:"mock,omitempty"`
}

// migLister is the part of the inventory that lists MIG devices.
type migLister interface {
	MIGDevices() []gpu.MIGDevice
}

// listGPUs shows the host's GPUs with their health and holders. A host
// without GPUs (or without NVML) answers an empty list.
func (s *Server) listGPUs(c *echo.Context) error {
	resp := GPUListResponse{
		GPUs:       []gpu.GPU{},
		Topology:   gpu.Topology{GPUs: []int{}, Links: [][]gpu.Link{}, NUMANodes: []int{}},
		FreeSets:   []gpu.BestFree{},
		MIGDevices: []gpu.MIGDevice{},
	}
	if s.gpus != nil {
		resp.DriverVersion = s.gpus.DriverVersion()
		resp.CUDADriverVersion = s.gpus.CUDADriverVersion()
		if g := s.gpus.GPUs(); g != nil {
			resp.GPUs = g
		}
		resp.Mock = s.gpuMock()
		if m, ok := s.gpus.(migLister); ok {
			if migs := m.MIGDevices(); len(migs) > 0 {
				resp.MIGDevices = migs
			}
		}
		if len(resp.GPUs) > 0 {
			resp.Topology = s.gpus.Topology()
			resp.FreeSets = s.gpus.BestFree()
		}
	}
	return c.JSON(http.StatusOK, resp)
}
