package server

import (
	"context"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v5"
)

// MockFaultInjector makes a mock GPU report a fault, as the driver would
// through NVML's events: what POST /mock/gpus/{index}/faults drives on a
// mock GPU host (GPU_MOCK). The fault then takes the path a real one takes:
// the GPU is benched when the fault calls for it, and its holder is told
// (instance.gpu_fault, GET /instances/{id}, heartbeat).
type MockFaultInjector interface {
	// InjectFault reports Xid xid on the GPU at NVML index, or a
	// double-bit ECC error when ecc is set; it returns the GPU's UUID.
	// An index that is no GPU is a NotFound error.
	InjectFault(ctx context.Context, index int, xid uint64, ecc bool) (uuid string, err error)
}

// MockFaultRequest is the body of POST /mock/gpus/{index}/faults: an Xid, or
// a double-bit ECC error.
type MockFaultRequest struct {
	Xid uint64 `json:"xid,omitempty"`
	ECC bool   `json:"ecc,omitempty"`
}

// MockFaultResponse answers POST /mock/gpus/{index}/faults.
type MockFaultResponse struct {
	Index int    `json:"index"`
	UUID  string `json:"uuid"`
	Xid   uint64 `json:"xid,omitempty"`
	ECC   bool   `json:"ecc,omitempty"`
}

// maxXid bounds an injected Xid: NVIDIA's catalogue ends far below it.
const maxXid = 1023

var errNotMock = &statusError{status: http.StatusNotFound,
	msg: "faults are injected only on a mock GPU host (GPU_MOCK); this host's GPUs are real or absent"}

// injectMockFault makes a mock GPU report a fault.
func (s *Server) injectMockFault(c *echo.Context) error {
	if s.mockFaults == nil {
		return errNotMock
	}
	index, err := strconv.Atoi(c.Param("index"))
	if err != nil || index < 0 || index > maxGPUs {
		return fieldErr("index", "must be a GPU's NVML index")
	}
	var req MockFaultRequest
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	switch {
	case req.ECC && req.Xid != 0:
		return fieldErr("xid", "give either xid or ecc, not both")
	case !req.ECC && (req.Xid == 0 || req.Xid > maxXid):
		return fieldErr("xid", "must be an Xid between 1 and %d (or set ecc)", maxXid)
	}
	uuid, err := s.mockFaults.InjectFault(c.Request().Context(), index, req.Xid, req.ECC)
	if err != nil {
		return err
	}
	s.log.Warn("mock GPU fault injected", "index", index, "gpu", uuid, "xid", req.Xid, "ecc", req.ECC)
	return c.JSON(http.StatusAccepted, MockFaultResponse{Index: index, UUID: uuid, Xid: req.Xid, ECC: req.ECC})
}
