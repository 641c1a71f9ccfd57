package reporter

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"time"
)

// Reporter keeps the central server informed about this host; see the
// package documentation for the protocol. Collect may be called from any
// goroutine; Run must be called at most once.
type Reporter struct {
	opts    Options
	backoff Backoff
	logger  *slog.Logger

	announcer *announcer
	term      *terminator
	// pending are the discrepancies found in the last heartbeat answer, to
	// be sent in the next heartbeat. Used by Run's goroutine only.
	pending discrepancies
}

// New checks opts and builds a Reporter. Without opts.ServerURL the Reporter
// is standalone: Enabled is false, Run only says so and waits, and Collect
// still serves GET /host.
func New(opts Options) (*Reporter, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	logger := opts.Logger.With("component", "reporter")
	return &Reporter{
		opts:      opts,
		backoff:   opts.Backoff.withDefaults(),
		logger:    logger,
		announcer: newAnnouncer(opts.Events),
		term: &terminator{
			rt:       opts.Runtime,
			timeout:  opts.TerminateTimeout,
			logger:   logger,
			inFlight: map[string]bool{},
		},
	}, nil
}

// Enabled reports whether the Reporter reports to a central server; false
// when it is standalone (or nil).
func (r *Reporter) Enabled() bool { return r != nil && r.opts.ServerURL != "" }

// session is what Run remembers between rounds. None of it is reported: it
// only decides when to register and how long to wait.
type session struct {
	registered bool
	// fingerprint is the inventory fingerprint of the last registration.
	fingerprint string
	// reason is why the next registration happens; empty while registered.
	reason string
	// streak is the kind of the current run of failures, failNone when the
	// last call succeeded; failures counts the calls in it that back off.
	streak      failure
	failures    int
	failedCalls int
	downSince   time.Time
}

// Run registers, then heartbeats every Interval, until ctx is done; it then
// waits for the terminations it started and returns nil. It never gives up
// and never terminates an instance because the server is unreachable. A
// standalone Reporter logs that once and just waits.
func (r *Reporter) Run(ctx context.Context) error {
	if !r.Enabled() {
		if r != nil {
			r.logger.Info("API_SERVER_URL is not set: serving the local API only, reporting to no central server")
		}
		<-ctx.Done()
		return nil
	}
	r.logger.Info("reporting to the central server", "server", r.opts.ServerURL, "interval", r.opts.Interval)
	defer r.term.wait()
	s := &session{reason: ReasonStart}
	for {
		wait := r.round(ctx, s)
		if ctx.Err() != nil || r.opts.Sleep(ctx, wait) != nil || ctx.Err() != nil {
			return nil
		}
	}
}

// round registers when needed and sends one heartbeat, and returns how long
// to wait before the next round.
func (r *Reporter) round(ctx context.Context, s *session) time.Duration {
	snap := r.snapshot(ctx)
	if s.registered && snap.fingerprint != s.fingerprint {
		r.logger.Info("GPU inventory changed; registering again", "fingerprint", snap.fingerprint)
		s.registered, s.reason = false, ReasonHardwareChanged
	}
	if !s.registered {
		fp, err := r.register(ctx, s.reason)
		if err != nil {
			return r.failed(ctx, s, "register", err)
		}
		r.logger.Info("registered with the central server", "reason", s.reason, "fingerprint", fp)
		s.registered, s.fingerprint, s.reason = true, fp, ""
	}
	resp, err := r.heartbeat(ctx, snap)
	if err != nil {
		return r.failed(ctx, s, "heartbeat", err)
	}
	r.recovered(s)
	r.observe(HeartbeatOK)
	r.reconcile(ctx, snap, resp)
	if resp.Reregister {
		s.registered, s.reason = false, ReasonServerRequest
	}
	return r.opts.Interval
}

// failed decides what a failed call means and how long to wait. Any failure
// drops the registration, so that the first call that succeeds afterwards is
// a fresh registration followed by a heartbeat with the current state.
func (r *Reporter) failed(ctx context.Context, s *session, op string, err error) time.Duration {
	if ctx.Err() != nil {
		return 0
	}
	kind := classify(op, err)
	r.observe(kind.result())
	if s.streak == failNone {
		s.downSince = r.opts.Now()
	}
	first := kind != s.streak
	s.streak = kind
	s.failedCalls++
	s.registered = false
	if s.reason == "" {
		s.reason = ReasonReconnect
	}
	// Stale after a failure: the next heartbeat must not repeat them.
	r.pending = discrepancies{}

	switch kind {
	case failAuth:
		s.failures = 0
		if first {
			r.logger.Error("the central server refuses the agent's token: check AGENT_TOKEN; retrying slowly, instances keep running",
				"op", op, "error", err, "retry_every", r.backoff.SlowRetry)
		}
		return r.backoff.SlowRetry
	case failRejected:
		s.failures = 0
		if first {
			r.logger.Error("the central server refuses the agent's requests; retrying slowly, instances keep running",
				"op", op, "error", err, "retry_every", r.backoff.SlowRetry)
		}
		return r.backoff.SlowRetry
	case failUnknownAgent:
		s.failures++
		s.reason = ReasonUnknownAgent
		r.logger.Warn("the central server does not know this agent; registering again", "error", err)
		return r.backoff.delay(s.failures)
	default:
		s.failures++
		wait := r.backoff.delay(s.failures)
		if first {
			r.logger.Warn("central server unreachable; retrying with backoff, instances keep running",
				"op", op, "error", err, "retry_in", wait)
		} else {
			r.logger.Debug("central server still unreachable", "op", op, "error", err,
				"failures", s.failures, "retry_in", wait)
		}
		return wait
	}
}

// observe tells ObserveHeartbeat how a round ended.
func (r *Reporter) observe(result string) {
	if r.opts.ObserveHeartbeat != nil {
		r.opts.ObserveHeartbeat(result, r.opts.Now())
	}
}

// recovered ends a failure streak after a successful heartbeat.
func (r *Reporter) recovered(s *session) {
	if s.streak != failNone {
		r.logger.Info("central server reachable again; current state sent",
			"failed_calls", s.failedCalls, "down_for", r.opts.Now().Sub(s.downSince).Round(time.Second))
	}
	s.streak, s.failures, s.failedCalls = failNone, 0, 0
}

// register sends a fresh host report and returns its inventory fingerprint.
func (r *Reporter) register(ctx context.Context, reason string) (string, error) {
	rep, err := r.Collect(ctx)
	if err != nil {
		r.logger.Warn("host report incomplete; registering with what could be read", "error", err)
	}
	fp := inventoryFingerprint(rep.GPUs)
	_, err = r.post(ctx, "register", RegisterPath, RegisterRequest{Reason: reason, InventoryFingerprint: fp, Host: rep, Images: r.imageRefs(ctx), Volumes: r.volumeRefs(ctx)})
	return fp, err
}

// heartbeat sends snap and returns the server's answer. An answer that is
// not valid JSON is logged and read as {}: the heartbeat itself arrived, but
// nothing is reconciled on words the agent cannot read.
func (r *Reporter) heartbeat(ctx context.Context, snap snapshot) (HeartbeatResponse, error) {
	req := HeartbeatRequest{
		AgentID:              r.opts.AgentID,
		SentAt:               r.opts.Now().UTC(),
		InventoryFingerprint: snap.fingerprint,
		GPUUsage:             nonNil(snap.usage),
		GPUFreeSets:          nonNil(snap.freeSets),
		MIGFree:              snap.migFree,
		Orphans:              nonNil(r.pending.orphans),
		Missing:              nonNil(r.pending.missing),
		Resources:            r.resourcesInfo(),
		Images:               r.imageRefs(ctx),
		Volumes:              r.volumeRefs(ctx),
	}
	if snap.listErr != nil {
		req.RuntimeError = snap.listErr.Error()
	} else {
		held := heldGPUs(snap.gpus)
		req.Instances = make([]InstanceState, 0, len(snap.instances))
		for _, inst := range snap.instances {
			st := instanceState(inst, held)
			if r.opts.GPUs != nil {
				st.GPUFaults = r.opts.GPUs.Faults(inst.ID)
			}
			st.Usage = r.usageOf(ctx, inst)
			req.Instances = append(req.Instances, st)
		}
	}
	if d, err := r.drainInfo(ctx); err != nil {
		r.logger.Warn("drain state unreadable; heartbeat sent without it", "error", err)
	} else {
		req.Drain = d
	}
	body, err := r.post(ctx, "heartbeat", HeartbeatPath, req)
	if err != nil {
		return HeartbeatResponse{}, err
	}
	resp, err := decodeHeartbeatResponse(body)
	if err != nil {
		r.logger.Warn("heartbeat answer is not valid JSON; reconciling nothing", "error", err, "body", snippet(body))
		return HeartbeatResponse{}, nil
	}
	return resp, nil
}

// decodeHeartbeatResponse reads the central server's answer to a
// heartbeat; an empty body is an answer that says nothing.
func decodeHeartbeatResponse(body []byte) (HeartbeatResponse, error) {
	var resp HeartbeatResponse
	if len(bytes.TrimSpace(body)) == 0 {
		return resp, nil
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return HeartbeatResponse{}, err
	}
	return resp, nil
}
