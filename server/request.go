package server

import (
	"maps"

	"slices"
	"time"

	"github.com/distribution/reference"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
	"github.com/host-agent/host-agent/runtime/usage"
)

// The API's request and response bodies. Their JSON fields are mirrored in
// openapi.json; TestOpenAPIFieldsMatchStructs fails when the two differ.

// StartInstanceRequest is the body of POST /start_instance, known to the
// central server as InstanceData.
type StartInstanceRequest struct {
	InstanceID   string               `json:"instance_id"`
	Image        string               `json:"image"`
	Command      []string             `json:"command,omitempty"`
	Entrypoint   []string             `json:"entrypoint,omitempty"`
	Env          map[string]string    `json:"env,omitempty"`
	Resources    *ResourcesRequest    `json:"resources,omitempty"`
	RegistryAuth *RegistryAuthRequest `json:"registry_auth,omitempty"`
	Labels       map[string]string    `json:"labels,omitempty"`
	// GPUCount asks for that many free, healthy GPUs; GPUs names them (UUIDs
	// or NVML indexes). At most one of the two.
	GPUCount int      `json:"gpu_count,omitempty"`
	GPUs     []string `json:"gpus,omitempty"`
	// MIGProfile asks for one free MIG device of that profile ("1g.10gb")
	// on a host that rents MIG devices (MIG_RENTALS); not with gpu_count
	// or gpus.
	MIGProfile string `json:"mig_profile,omitempty"`
	// Ports are container ports to publish, each on a host port the agent
	// picks.
	Ports []PortRequest `json:"ports,omitempty"`
	// Ulimits are process limits by name (-1: unlimited).
	Ulimits map[string]int64 `json:"ulimits,omitempty"`
	// SSHAuthorizedKeys are public keys placed read-only at
	// /root/.ssh/authorized_keys (and the image user's ~/.ssh).
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys,omitempty"`
	// Volumes are volumes (POST /volumes) to mount read-write, each at its
	// mount path; each must belong to the owner named.
	Volumes []VolumeAttachRequest `json:"volumes,omitempty"`
}

// PortRequest asks for a container port to be published.
type PortRequest struct {
	ContainerPort int `json:"container_port"`
	// Protocol is tcp (the default) or udp.
	Protocol string `json:"protocol,omitempty"`
}

// GPUResponse is a GPU an instance holds.
type GPUResponse struct {
	Index int    `json:"index"`
	UUID  string `json:"uuid"`
}

// ResourcesRequest are an instance's limits; zero or absent means the
// runtime's default.
type ResourcesRequest struct {
	CPUs     float64 `json:"cpus,omitempty"`
	MemoryMB int64   `json:"memory_mb,omitempty"`
	Pids     int64   `json:"pids,omitempty"`
	ShmMB    int64   `json:"shm_mb,omitempty"`
	// DiskGB limits the writable layer, in GiB (runtime/disk); absent:
	// RENTAL_DISK_GB or the host's share.
	DiskGB int64 `json:"disk_gb,omitempty"`
	// EgressMbps and IngressMbps bound what the rental sends and
	// receives, in Mbit/s; zero or absent: the host's default
	// (RENTAL_EGRESS_MBPS, RENTAL_INGRESS_MBPS), unlimited without one.
	EgressMbps  int64 `json:"egress_mbps,omitempty"`
	IngressMbps int64 `json:"ingress_mbps,omitempty"`
}

// RegistryAuthRequest are credentials for pulling the image.
type RegistryAuthRequest struct {
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
}

// TerminateInstanceRequest is the body of POST /terminate_instance.
type TerminateInstanceRequest struct {
	InstanceID string `json:"instance_id"`
	// TimeoutSeconds is how long to wait after SIGTERM before SIGKILL; nil
	// means the server's default, 0 kills at once.
	TimeoutSeconds *int `json:"timeout_seconds,omitempty"`
}

// StartInstanceResponse answers POST /start_instance. Message and
// ContainerID are the seed API's; the rest was added alongside.
type StartInstanceResponse struct {
	Message     string    `json:"message"`
	ContainerID string    `json:"container_id"`
	InstanceID  string    `json:"instance_id"`
	Status      string    `json:"status"`
	Image       string    `json:"image"`
	CreatedAt   time.Time `json:"created_at,omitzero"`
	// GPUs are the GPUs the instance holds (empty for a CPU rental).
	GPUs []GPUResponse `json:"gpus"`
	// Ports are the published ports, each with its host port.
	Ports []PortResponse `json:"ports"`
}

// PortResponse is a published port: HostPort on the host's addresses
// reaches ContainerPort inside the instance.
type PortResponse struct {
	ContainerPort int    `json:"container_port"`
	Protocol      string `json:"protocol"`
	HostPort      int    `json:"host_port"`
}

// TerminateInstanceResponse answers POST /terminate_instance.
type TerminateInstanceResponse struct {
	Message    string `json:"message"`
	InstanceID string `json:"instance_id"`
}

// InstanceResponse is one instance as GET /instances and
// GET /instances/{id} show it.
type InstanceResponse struct {
	InstanceID  string `json:"instance_id"`
	ContainerID string `json:"container_id"`
	Image       string `json:"image"`
	Status      string `json:"status"`
	// ExitCode is null until the instance has exited.
	ExitCode *int `json:"exit_code"`
	// OOMKilled says the kernel killed a process of the instance for
	// exceeding its memory limit.
	OOMKilled bool `json:"oom_killed"`
	// Reason says why an exited instance stopped, when the agent knows:
	// "disk_limit" or "oom"; absent otherwise.
	Reason string `json:"reason,omitempty"`
	// DiskLimitBytes is the limit of its writable layer; absent when it
	// has none.
	DiskLimitBytes uint64            `json:"disk_limit_bytes,omitempty"`
	Pid            uint32            `json:"pid"`
	CreatedAt      time.Time         `json:"created_at,omitzero"`
	StartedAt      time.Time         `json:"started_at,omitzero"`
	FinishedAt     time.Time         `json:"finished_at,omitzero"`
	Labels         map[string]string `json:"labels"`
	GPUs           []GPUResponse     `json:"gpus"`
	Ports          []PortResponse    `json:"ports"`
	// GPUFaults are the Xids and ECC errors its GPUs reported while it held
	// them, oldest first (as instance.gpu_fault events told); absent when
	// none.
	GPUFaults []gpu.Fault `json:"gpu_faults,omitempty"`
	// Usage is what the instance has used since its start; absent where
	// the agent meters nothing.
	Usage *usage.Usage `json:"usage,omitempty"`
}

// ListInstancesResponse answers GET /instances.
type ListInstancesResponse struct {
	Instances []InstanceResponse `json:"instances"`
}

// StatusResponse answers GET /healthz and GET /readyz.
type StatusResponse struct {
	Status  string `json:"status"`
	AgentID string `json:"agent_id,omitempty"`
	// Runtime is set by GET /readyz: the container runtime in use.
	Runtime string `json:"runtime,omitempty"`
	// Drain is set by GET /readyz: a drained host is up but takes no new
	// rentals.
	Drain *DrainStatus `json:"drain,omitempty"`
}

// Seed API messages, kept word for word.
const (
	msgStarted    = "Instance started successfully"
	msgTerminated = "Instance terminated successfully"
)

// toSpec converts a validated request. Empty lists and maps become nil so
// that a request that leaves a field out and one that sends it empty hash
// alike, and a repeated start is recognised as the same one.
func (r *StartInstanceRequest) toSpec() runtime.InstanceSpec {
	spec := runtime.InstanceSpec{
		ID:         r.InstanceID,
		Image:      normalizeImage(r.Image),
		Entrypoint: nilIfEmpty(r.Entrypoint),
		Command:    nilIfEmpty(r.Command),
		Env:        nilIfEmptyMap(r.Env),
		Labels:     nilIfEmptyMap(r.Labels),
	}
	if r.Resources != nil {
		spec.Resources = runtime.Resources{
			CPUs:     r.Resources.CPUs,
			MemoryMB: r.Resources.MemoryMB,
			Pids:     r.Resources.Pids,
			ShmMB:    r.Resources.ShmMB,
			DiskGB:   r.Resources.DiskGB,

			EgressMbps:  r.Resources.EgressMbps,
			IngressMbps: r.Resources.IngressMbps,
		}
	}
	spec.GPURequest = runtime.GPURequest{Count: r.GPUCount, IDs: nilIfEmpty(r.GPUs), MIGProfile: r.MIGProfile}
	for _, p := range r.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = hostport.TCP
		}
		spec.Ports = append(spec.Ports, hostport.PortRequest{ContainerPort: uint16(p.ContainerPort), Protocol: proto})
	}
	if len(r.Ulimits) > 0 {
		spec.Ulimits = maps.Clone(r.Ulimits)
	}
	spec.SSHAuthorizedKeys = nilIfEmpty(r.SSHAuthorizedKeys)
	spec.Volumes = volumeRequests(r.Volumes)
	spec.RegistryAuth = r.RegistryAuth.toRuntime()
	return spec
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return slices.Clone(s)
}

func nilIfEmptyMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

func startResponse(inst runtime.Instance) StartInstanceResponse {
	return StartInstanceResponse{
		Message:     msgStarted,
		ContainerID: inst.ContainerID,
		InstanceID:  inst.ID,
		Status:      string(inst.Status),
		Image:       inst.Image,
		CreatedAt:   inst.CreatedAt.UTC(),
		GPUs:        gpuResponses(inst.GPUs),
		Ports:       portResponses(inst.Ports),
	}
}

func portResponses(ports []hostport.Mapping) []PortResponse {
	out := make([]PortResponse, len(ports))
	for i, p := range ports {
		out[i] = PortResponse{ContainerPort: int(p.ContainerPort), Protocol: p.Protocol, HostPort: int(p.HostPort)}
	}
	return out
}

func gpuResponses(gpus []runtime.GPU) []GPUResponse {
	out := make([]GPUResponse, len(gpus))
	for i, g := range gpus {
		out[i] = GPUResponse{Index: g.Index, UUID: g.UUID}
	}
	return out
}

// normalizeImage spells a validated reference in full (nginx becomes
// docker.io/library/nginx:latest), so that two spellings of one image are
// one spec.
func normalizeImage(image string) string {
	named, err := reference.ParseDockerRef(image)
	if err != nil {
		return image
	}
	return named.String()
}

func instanceResponse(inst runtime.Instance) InstanceResponse {
	labels := inst.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	return InstanceResponse{
		InstanceID:     inst.ID,
		ContainerID:    inst.ContainerID,
		Image:          inst.Image,
		Status:         string(inst.Status),
		ExitCode:       inst.ExitCode,
		OOMKilled:      inst.OOMKilled,
		Reason:         inst.ExitReason,
		DiskLimitBytes: inst.DiskLimit(),
		Pid:            inst.Pid,
		CreatedAt:      inst.CreatedAt.UTC(),
		StartedAt:      inst.StartedAt.UTC(),
		FinishedAt:     inst.FinishedAt.UTC(),
		Labels:         labels,
		GPUs:           gpuResponses(inst.GPUs),
		Ports:          portResponses(inst.Ports),
	}
}
