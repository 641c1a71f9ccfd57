package gpu

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/containerd/errdefs"
)

// probe runs per-field NVML queries with one policy: NOT_SUPPORTED is a
// normal answer meaning "no value", GPU_IS_LOST is remembered so the caller
// can take the GPU out of service, and anything else is logged and left zero,
// because one unreadable field must not keep a host off the market.
type probe struct {
	logger *slog.Logger
	level  slog.Level
	lost   bool
}

// query calls f under p's policy. A panic counts as "no value": go-nvml's
// mocks panic for methods a fake does not implement, and a partial fake
// should give a partial inventory, not a crashed agent.
func query[T any](p *probe, field string, f func() (T, nvml.Return)) (v T, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			p.logger.Debug("NVML query panicked", "field", field, "panic", fmt.Sprint(r))
			var zero T
			v, ok = zero, false
		}
	}()
	v, ret := f()
	switch ret {
	case nvml.SUCCESS:
		return v, true
	case nvml.ERROR_NOT_SUPPORTED:
	case nvml.ERROR_GPU_IS_LOST:
		p.lost = true
	default:
		p.logger.Log(context.Background(), p.level, "NVML query failed", "field", field, "error", ret.Error())
	}
	var zero T
	return zero, false
}

// nvmlError classifies an NVML failure as Unavailable (the driver, not the
// caller, is at fault) while keeping the Return for errors.Is.
func nvmlError(op string, ret nvml.Return) error {
	return fmt.Errorf("%w: %s: %w", errdefs.ErrUnavailable, op, ret)
}

// cudaVersion turns NVML's 12040 into "12.4".
func cudaVersion(v int) string {
	if v <= 0 {
		return ""
	}
	return fmt.Sprintf("%d.%d", v/1000, v%1000/10)
}

// cString reads a NUL-terminated C char array.
func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
