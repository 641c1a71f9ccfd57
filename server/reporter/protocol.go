package reporter

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/hostport"
)

// Paths of the central server's agent API, relative to API_SERVER_URL; %s is
// the path-escaped agent ID.
const (
	RegisterPath  = "/api/v1/agents/%s/register"
	HeartbeatPath = "/api/v1/agents/%s/heartbeat"
)

// maxResponseBytes bounds how much of an answer is read, so that a broken
// server cannot make the agent buffer without limit.
const maxResponseBytes = 4 << 20

// Registration reasons, sent in RegisterRequest.Reason. They only help the
// server's operators read their logs; the server must not depend on them.
const (
	ReasonStart           = "start"
	ReasonReconnect       = "reconnect"
	ReasonHardwareChanged = "hardware_changed"
	ReasonServerRequest   = "server_request"
	ReasonUnknownAgent    = "unknown_agent"
)

// RegisterRequest is the body of POST .../register:
//
//	{
//	  "reason": "start",
//	  "inventory_fingerprint": "sha256:1f0c…",
//	  "host": {
//	    "agent_id": "host-17", "agent_version": "1.4.0", "hostname": "gpu-box-17",
//	    "os": {"name": "Ubuntu 22.04.4 LTS", "id": "ubuntu", "version_id": "22.04", "kernel": "6.8.0-45-generic"},
//	    "cpu": {"model": "AMD EPYC 7763 64-Core Processor", "architecture": "amd64",
//	            "sockets": 2, "cores": 128, "threads": 256, "avx": true, "avx2": true, "avx512f": false},
//	    "memory": {"total_bytes": 1081172992000, "available_bytes": 1003182080000},
//	    "disk": {"path": "/var/lib/containerd", "total_bytes": 3840755982336, "free_bytes": 3521507110912},
//	    "runtime": {"name": "containerd", "version": "v2.4.2", "namespace": "rentals"},
//	    "cdi_available": true,
//	    "gpus": [{"index": 0, "uuid": "GPU-8f6c…", "name": "NVIDIA H100 80GB HBM3", "healthy": true, "held_by": "", …}],
//	    "driver_version": "550.54.15", "cuda_version": "12.4",
//	    "public_url": "https://gpu-box-17.example.net:8080",
//	    "collected_at": "2025-01-02T03:04:05Z"
//	  }
//	}
type RegisterRequest struct {
	// Reason says why the agent registers: ReasonStart and the others.
	Reason string `json:"reason"`
	// InventoryFingerprint is the fingerprint of Host.GPUs, as heartbeats
	// carry it too.
	InventoryFingerprint string     `json:"inventory_fingerprint"`
	Host                 HostReport `json:"host"`
	// Images are the images the runtime holds for rentals (at most
	// MaxReportedImages, most recently used first); absent when the
	// runtime keeps none or they could not be read.
	Images []ImageRef `json:"images,omitempty"`
	// Volumes are the host's volumes (at most MaxReportedVolumes, by
	// name); absent when there are none or the agent keeps none.
	Volumes []VolumeRef `json:"volumes,omitempty"`
}

// HeartbeatRequest is the body of POST .../heartbeat:
//
//	{
//	  "agent_id": "host-17",
//	  "sent_at": "2025-01-02T03:04:20Z",
//	  "inventory_fingerprint": "sha256:1f0c…",
//	  "instances": [
//	    {"instance_id": "a", "container_id": "a", "status": "running", "exit_code": null,
//	     "image": "registry.example/llm:1", "spec_hash": "9c1e…",
//	     "gpus": [{"index": 0, "uuid": "GPU-8f6c…"}], "started_at": "2025-01-02T01:00:00Z"},
//	    {"instance_id": "b", "container_id": "b", "status": "exited", "exit_code": 137,
//	     "gpus": [], "started_at": "2025-01-02T01:00:00Z", "finished_at": "2025-01-02T02:00:00Z"}
//	  ],
//	  "gpu_usage": [{"index": 0, "uuid": "GPU-8f6c…", "utilization_percent": 97, "memory_utilization_percent": 40,
//	                 "memory_used_mib": 61440, "memory_used_bytes": 64424509440, "temperature_c": 71, "power_watts": 612.5}],
//	  "orphans": ["x"],
//	  "missing": ["c"]
//	}
type HeartbeatRequest struct {
	AgentID string    `json:"agent_id"`
	SentAt  time.Time `json:"sent_at"`
	// InventoryFingerprint changes whenever a GPU appears, disappears or
	// turns unhealthy; the agent registers again before such a heartbeat.
	InventoryFingerprint string `json:"inventory_fingerprint"`
	// Instances is every instance in the runtime's namespace, running or
	// not. It is null, with RuntimeError set, when the runtime could not be
	// listed: that means "unknown", never "nothing runs".
	Instances    []InstanceState `json:"instances"`
	RuntimeError string          `json:"runtime_error,omitempty"`
	// GPUUsage samples every GPU; empty on a host without GPUs.
	GPUUsage []gpu.Usage `json:"gpu_usage"`
	// GPUFreeSets says, for rentals of 1, 2, 4 and 8 GPUs, whether the host
	// can serve one now and how well connected its GPUs would be; empty on
	// a host without GPUs.
	GPUFreeSets []gpu.BestFree `json:"gpu_free_sets"`
	// MIGFree counts, per MIG profile the host has, the free and healthy
	// MIG devices (MIG_RENTALS); absent when the host rents none.
	MIGFree map[string]int `json:"mig_free,omitempty"`
	// Orphans and Missing are the discrepancies found against the previous
	// answer's expected_instances: instances on this host the server did
	// not expect, and expected ones that are not here. Both are empty when
	// that answer had no expected_instances.
	Orphans []string `json:"orphans"`
	Missing []string `json:"missing"`
	// Drain is present while the host is drained: its instances stay, but
	// it takes no new rentals.
	Drain *DrainInfo `json:"drain,omitempty"`
	// Resources is what the host allocates to rentals and how much of it
	// they hold.
	Resources *ResourcesInfo `json:"resources,omitempty"`
	// Images are as in RegisterRequest.
	Images []ImageRef `json:"images,omitempty"`
	// Volumes are as in RegisterRequest.
	Volumes []VolumeRef `json:"volumes,omitempty"`
}

// InstanceState is one instance as the runtime reports it.
type InstanceState struct {
	InstanceID  string `json:"instance_id"`
	ContainerID string `json:"container_id"`
	// Status is one of runtime.Status: created, running, paused, exited,
	// unknown.
	Status string `json:"status"`
	// ExitCode is null until the instance's main process has exited.
	ExitCode *int `json:"exit_code"`
	// OOMKilled says the kernel killed a process of the instance for
	// exceeding its memory limit.
	OOMKilled bool `json:"oom_killed,omitempty"`
	// Reason says why an exited instance stopped, when the agent knows:
	// "disk_limit" or "oom".
	Reason string `json:"reason,omitempty"`
	// DiskLimitBytes is the limit of its writable layer; absent when none.
	DiskLimitBytes uint64 `json:"disk_limit_bytes,omitempty"`
	Image          string `json:"image,omitempty"`
	SpecHash       string `json:"spec_hash,omitempty"`
	// GPUs are the GPUs the instance holds; empty, never null, when none.
	GPUs []GPURef `json:"gpus"`
	// Ports are the published ports; empty, never null, when none.
	Ports      []hostport.Mapping `json:"ports"`
	CreatedAt  *time.Time         `json:"created_at,omitempty"`
	StartedAt  *time.Time         `json:"started_at,omitempty"`
	FinishedAt *time.Time         `json:"finished_at,omitempty"`
	// GPUFaults are the Xids and ECC errors its GPUs reported while it held
	// them, as instance.gpu_fault events told; absent when none.
	GPUFaults []gpu.Fault `json:"gpu_faults,omitempty"`
	// Usage is what the instance has used since its start, as last read;
	// absent where the agent meters nothing.
	Usage *events.Usage `json:"usage,omitempty"`
}

// GPURef names a GPU an instance holds.
type GPURef struct {
	Index int    `json:"index"`
	UUID  string `json:"uuid"`
}

// HeartbeatResponse is what the server may answer to a heartbeat:
//
//	{"expected_instances": ["a", "b", "c"], "terminate": ["x"], "reregister": false}
//
// Every field is optional.
type HeartbeatResponse struct {
	// ExpectedInstances lists the instances the server expects on this
	// host. Absent (or null) means the server does not say, and the agent
	// reconciles nothing; an empty list means that nothing is expected, so
	// every instance here is an orphan.
	ExpectedInstances []string `json:"expected_instances"`
	// Terminate names orphans the server wants gone. The agent terminates an
	// instance named here only when ExpectedInstances is present in the same
	// answer and does not list it; it never terminates anything on its own.
	Terminate []string `json:"terminate"`
	// Reregister asks the agent to send its host report again before the
	// next heartbeat.
	Reregister bool `json:"reregister"`
}

// inventoryFingerprint hashes the GPUs' UUIDs and health, the facts whose
// change makes the server's picture of the host wrong. Utilisation, holders
// and the like change all the time and are left out.
func inventoryFingerprint(gpus []gpu.GPU) string {
	lines := make([]string, 0, len(gpus))
	for _, g := range gpus {
		health := "healthy"
		if !g.Healthy {
			health = "unhealthy"
		}
		lines = append(lines, g.UUID+" "+health+"\n")
	}
	slices.Sort(lines)
	sum := sha256.Sum256([]byte(strings.Join(lines, "")))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// callError is a call that got no 2xx answer.
type callError struct {
	op     string
	status int   // 0 when no answer arrived
	err    error // the transport error, when status is 0
	body   string
}

func (e *callError) Error() string {
	if e.status == 0 {
		return fmt.Sprintf("%s: %v", e.op, e.err)
	}
	if e.body != "" {
		return fmt.Sprintf("%s: central server answered %d: %s", e.op, e.status, e.body)
	}
	return fmt.Sprintf("%s: central server answered %d", e.op, e.status)
}

func (e *callError) Unwrap() error { return e.err }

// failure classifies a failed call into what the reporter does about it.
type failure int

const (
	failNone         failure = iota
	failOutage               // backoff with jitter
	failAuth                 // log once, retry slowly
	failRejected             // log once, retry slowly
	failUnknownAgent         // register again, with backoff
)

// result names the failure as ObserveHeartbeat receives it.
func (f failure) result() string {
	switch f {
	case failNone:
		return HeartbeatOK
	case failAuth:
		return HeartbeatUnauthorized
	case failRejected:
		return HeartbeatRejected
	case failUnknownAgent:
		return HeartbeatUnknownAgent
	default:
		return HeartbeatUnreachable
	}
}

func classify(op string, err error) failure {
	var ce *callError
	if !errors.As(err, &ce) || ce.status == 0 {
		return failOutage
	}
	switch {
	case ce.status == http.StatusUnauthorized || ce.status == http.StatusForbidden:
		return failAuth
	case ce.status == http.StatusNotFound && op == "heartbeat":
		return failUnknownAgent
	case ce.status == http.StatusRequestTimeout || ce.status == http.StatusTooManyRequests || ce.status >= 500:
		return failOutage
	default:
		return failRejected
	}
}

// endpoint is the URL of one of the agent API's paths.
func (r *Reporter) endpoint(path string) string {
	return strings.TrimRight(r.opts.ServerURL, "/") + fmt.Sprintf(path, url.PathEscape(r.opts.AgentID))
}

// post sends body as JSON to path and returns the answer's body on 2xx.
// Each call has its own timeout, so that a server that accepts the
// connection and then stalls counts as an outage rather than a hung agent.
func (r *Reporter) post(ctx context.Context, op, path string, body any) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("%s: encode: %w", op, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.endpoint(path), bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Authorization", "Bearer "+r.opts.Token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "host-agent/"+r.opts.Version)

	resp, err := r.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, &callError{op: op, err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if resp.StatusCode >= 300 && resp.StatusCode <= 399 {
		return nil, &callError{op: op, status: resp.StatusCode,
			body: fmt.Sprintf("redirect to %q not followed: fix API_SERVER_URL", resp.Header.Get("Location"))}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, &callError{op: op, status: resp.StatusCode, body: snippet(data)}
	}
	if err != nil {
		return nil, &callError{op: op, err: fmt.Errorf("read answer: %w", err)}
	}
	return data, nil
}

// snippet is the start of an error answer, enough to log why.
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
