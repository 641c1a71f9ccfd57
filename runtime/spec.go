package runtime

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// InstanceSpec is everything a back end needs to run one rental. The server
// validates a request before converting it into an InstanceSpec.
type InstanceSpec struct {
	ID    string
	Image string
	// Entrypoint, when set, replaces the image's ENTRYPOINT and drops its CMD
	// (as docker run --entrypoint does); Command replaces the image's CMD.
	Entrypoint []string
	Command    []string
	Env        map[string]string
	Resources  Resources
	// Limits are the limits enforced: Resources with what it leaves zero
	// filled in from the host's defaults (runtime/share) by the Lifecycle.
	// When zero, the back end enforces Resources.
	Limits Resources `json:"-"`
	Labels map[string]string
	// GPURequest is what the caller asked for; GPUs is what was reserved for
	// it (by GPURuntime), which the back end injects and records.
	GPURequest GPURequest
	GPUs       []GPU `json:"-"`
	// Ports are the container ports to publish, spelled canonically
	// (hostport.Normalize); PublishedPorts is what was reserved for them
	// (by PortReservations), which the back end publishes and records.
	// Left out of Hash when empty, so that earlier instances keep theirs.
	Ports          []hostport.PortRequest `json:",omitempty"`
	PublishedPorts []hostport.Mapping     `json:"-"`
	// Volumes are the volumes to attach, by name (VolumeRequest);
	// VolumeMounts is what was attached for them (by VolumeReservations),
	// which the back end bind-mounts read-write. Left out of Hash when
	// empty, so that earlier instances keep theirs.
	Volumes      []VolumeRequest `json:",omitempty"`
	VolumeMounts []VolumeMount   `json:"-"`
	// ReservedLabels record what the Lifecycle reserved for the instance
	// (GPUs, ports, addresses); the back end writes them on the container.
	ReservedLabels map[string]string `json:"-"`
	// ContainerLabels are the labels the Lifecycle assembled once the
	// start was admitted (RequestLabels: who, what was asked, the
	// reservations); the back end adds the agent's ID, the time of
	// creation and what only it knows (CreationLabels), then seals them.
	ContainerLabels map[string]string `json:"-"`
	// Ulimits are process limits by name (nofile, memlock, ...; see
	// UlimitNames); -1 is unlimited. A GPU rental's memlock defaults to
	// unlimited.
	Ulimits map[string]int64
	// SSHAuthorizedKeys are placed, one a line, read-only at
	// /root/.ssh/authorized_keys.
	SSHAuthorizedKeys []string
	// RegistryAuth is used for the pull only and is not part of Hash.
	RegistryAuth *RegistryAuth
}

// Resources are the limits enforced through cgroups and /dev/shm. Zero means
// the default: the host's share (runtime/share) under a Lifecycle that has
// one, else no limit (DefaultPids for pids, 64 MiB for /dev/shm).
type Resources struct {
	CPUs     float64
	MemoryMB int64
	Pids     int64
	ShmMB    int64
	// CPUSetCPUs and CPUSetMems pin the instance to CPUs and memory nodes
	// (kernel list syntax, "0-15,32-47"); empty: anywhere. runtime/numa
	// sets them in Limits. Omitted from Hash when empty, so that the hash
	// of a spec without them is what it was before they existed.
	CPUSetCPUs string `json:",omitempty"`
	CPUSetMems string `json:",omitempty"`
	// DiskGB limits the writable layer (runtime/disk); zero: the host's
	// default. Omitted from Hash when zero, as above.
	DiskGB int64 `json:",omitempty"`
	// EgressMbps and IngressMbps bound the rental's traffic out of and
	// into its network interface, in Mbit/s; zero: unlimited (or the
	// host's default, BandwidthDefaults). Omitted from Hash when zero, so
	// that the hash of a spec without them is what it was before.
	EgressMbps  int64 `json:",omitempty"`
	IngressMbps int64 `json:",omitempty"`
}

// DefaultPids is the pids limit of an instance that names none: every
// rental has one, so that a fork bomb stays inside its own.
const DefaultPids = 16384

// Enforced returns the limits the back end enforces: Limits when the
// Lifecycle filled them in, else Resources, with the pids limit never zero.
func (s InstanceSpec) Enforced() Resources {
	r := s.Limits
	if r == (Resources{}) {
		r = s.Resources
	}
	if r.Pids <= 0 {
		r.Pids = DefaultPids
	}
	return r
}

// RegistryAuth holds credentials for the image's registry.
type RegistryAuth struct {
	Username string
	Password string
}

// Hash identifies what the spec asks to run. Credentials are left out (the
// same workload pulled with rotated credentials is the same workload), and so
// are the GPUs reserved for it, which answer the request rather than make it.
func (s InstanceSpec) Hash() string {
	c := s
	c.RegistryAuth = nil
	// encoding/json sorts map keys, so equal specs encode equally.
	b, err := json.Marshal(c)
	if err != nil {
		// Only strings, numbers and maps of strings: Marshal cannot fail.
		panic(err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
