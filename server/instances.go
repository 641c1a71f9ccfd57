package server

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/usage"
)

// Bounds of GET /instances/{id}/logs?tail=N.
const (
	defaultLogTail = 100
	maxLogTail     = 10000
)

// startInstance starts a rental. The runtime makes it idempotent: starting
// the same spec again answers the running instance, a different spec under
// the same ID is a conflict.
func (s *Server) startInstance(c *echo.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			// recoverPanics answers it with a 500.
			s.metrics.ops.startsTotal.WithLabelValues(startError).Inc()
			panic(r)
		}
		s.metrics.ops.startsTotal.WithLabelValues(startResult(err)).Inc()
	}()
	var req StartInstanceRequest
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	began := time.Now()
	inst, err := s.rt.Start(c.Request().Context(), req.toSpec())
	result := "ok"
	if err != nil {
		result = "error"
	}
	var draining *runtime.DrainingError
	if !errors.As(err, &draining) {
		// A refusal of a drained host is counted (startsTotal), not timed.
		s.metrics.starts.WithLabelValues(result).Observe(time.Since(began).Seconds())
	}
	if err != nil {
		return blameNamedGPUs(err, req.GPUs)
	}
	return c.JSON(http.StatusOK, startResponse(inst))
}

// blameNamedGPUs names the gpus field in a failed GPU reservation of a
// request that named its GPUs: one held by another rental, unhealthy or
// unknown is that field's fault. Too few free GPUs for a count is not a
// field's fault and stays as it is.
func blameNamedGPUs(err error, named []string) error {
	var step *runtime.StepError
	var fielder interface{ ErrorField() string }
	if len(named) == 0 || !errors.As(err, &step) || step.Step != runtime.StepAllocate || errors.As(err, &fielder) {
		return err
	}
	return fieldBlame{err: err, field: "gpus"}
}

// fieldBlame names the request field a runtime error is about, keeping
// its kind for the error handler.
type fieldBlame struct {
	err   error
	field string
}

func (e fieldBlame) Error() string      { return e.err.Error() }
func (e fieldBlame) Unwrap() error      { return e.err }
func (e fieldBlame) ErrorField() string { return e.field }

// terminateInstance stops a rental and removes its container.
func (s *Server) terminateInstance(c *echo.Context) error {
	var req TerminateInstanceRequest
	if err := decodeBody(c, &req); err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	timeout := s.stopTimeout
	if req.TimeoutSeconds != nil {
		timeout = time.Duration(*req.TimeoutSeconds) * time.Second
	}
	if err := s.rt.Terminate(c.Request().Context(), req.InstanceID, timeout); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, TerminateInstanceResponse{Message: msgTerminated, InstanceID: req.InstanceID})
}

// listInstances answers every instance the runtime holds, sorted by ID.
func (s *Server) listInstances(c *echo.Context) error {
	list, err := s.rt.List(c.Request().Context())
	if err != nil {
		return err
	}
	out := ListInstancesResponse{Instances: make([]InstanceResponse, 0, len(list))}
	for _, inst := range list {
		resp := instanceResponse(inst)
		resp.GPUFaults = s.gpuFaults(inst.ID)
		resp.Usage = s.usageOf(c.Request().Context(), inst, false)
		out.Instances = append(out.Instances, resp)
	}
	sort.Slice(out.Instances, func(i, j int) bool {
		return out.Instances[i].InstanceID < out.Instances[j].InstanceID
	})
	return c.JSON(http.StatusOK, out)
}

func (s *Server) getInstance(c *echo.Context) error {
	id := c.Param("id")
	if err := validateInstanceID("id", id); err != nil {
		return err
	}
	inst, err := s.rt.Get(c.Request().Context(), id)
	if err != nil {
		return err
	}
	resp := instanceResponse(inst)
	resp.GPUFaults = s.gpuFaults(inst.ID)
	resp.Usage = s.usageOf(c.Request().Context(), inst, true)
	return c.JSON(http.StatusOK, resp)
}

// UsageMeter meters the rentals (runtime/usage's Meter): Observe reads an
// instance's counters now, Last answers what was read last.
type UsageMeter interface {
	Observe(ctx context.Context, inst runtime.Instance) usage.Usage
	Last(id string) (usage.Usage, bool)
}

// usageOf is inst's usage: read now when fresh is set or nothing was read
// yet, else as last read (GET /instances answers many at once); nil
// without a meter.
func (s *Server) usageOf(ctx context.Context, inst runtime.Instance, fresh bool) *usage.Usage {
	if s.usage == nil {
		return nil
	}
	if !fresh {
		if u, ok := s.usage.Last(inst.ID); ok {
			return &u
		}
	}
	u := s.usage.Observe(ctx, inst)
	return &u
}

// gpuFaults lists the GPU faults of instance id; nil on a host without GPUs.
func (s *Server) gpuFaults(id string) []gpu.Fault {
	if s.gpus == nil {
		return nil
	}
	return s.gpus.Faults(id)
}

// headerLogTruncated says that the lines asked for were more than
// runtime.MaxLogBytes and were cut from the front.
const headerLogTruncated = "X-Log-Truncated"

// instanceLogs answers the last lines of an instance's output as plain
// text.
func (s *Server) instanceLogs(c *echo.Context) error {
	id := c.Param("id")
	if err := validateInstanceID("id", id); err != nil {
		return err
	}
	tail, tailGiven := defaultLogTail, false
	if q := c.QueryParam("tail"); q != "" || c.QueryParams().Has("tail") {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 || n > maxLogTail {
			return fieldErr("tail", "must be an integer between 1 and %d", maxLogTail)
		}
		tail, tailGiven = n, true
	}
	switch f := c.QueryParam("follow"); f {
	case "true", "1":
		return s.followLogs(c, id, tail, tailGiven)
	case "", "false", "0":
	default:
		return fieldErr("follow", "must be true or false")
	}
	if c.QueryParams().Has("since") {
		return fieldErr("since", "needs follow=true")
	}
	if lf, ok := s.rt.(runtime.LogFollower); ok {
		// Read before the lines: resuming from it repeats rather than
		// loses what is written in between.
		if off, err := lf.LogOffset(c.Request().Context(), id); err == nil {
			c.Response().Header().Set(headerLogOffset, strconv.FormatInt(off, 10))
		}
	}
	logs, truncated, err := s.rt.Logs(c.Request().Context(), id, tail)
	if err != nil {
		return err
	}
	if truncated {
		c.Response().Header().Set(headerLogTruncated, "true")
	}
	return c.Blob(http.StatusOK, echo.MIMETextPlainCharsetUTF8, logs)
}
