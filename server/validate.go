package server

import (
	"fmt"
	"sort"
	"strings"

	"github.com/distribution/reference"

	"github.com/host-agent/host-agent/gpu"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostport"
)

// Limits on a start request. They keep one request from producing a
// container spec the runtime would choke on, and bound the labels stored
// with the container.
const (
	maxInstanceIDLen = 63
	maxEnvEntries    = 1000
	maxLabels        = 64
	maxLabelKeyLen   = 128
	// maxLabelBytes is containerd's limit on a label's key and value
	// together; user labels are stored under runtime.LabelUserPrefix.
	maxLabelBytes = 4096
	maxCPUs       = 1024
	// minCPUs is the smallest CFS quota the kernel takes (1ms per 100ms
	// period).
	minCPUs     = 0.01
	minMemoryMB = 4
	// maxSizeMB (16 TiB) keeps sizes far from overflowing when the runtime
	// converts them to bytes.
	maxSizeMB = 16 << 20
	// maxDiskGB bounds a writable layer's limit (a PiB).
	maxDiskGB = 1 << 20
	// maxPids is the kernel's largest pid_max.
	maxPids = 1 << 22
	// maxGPUs is far above any server's GPU count.
	maxGPUs = 64
)

// validate checks every field of a start request, returning a *FieldError
// for the first one at fault, in a fixed order so that the same request is
// always rejected for the same reason.
func (r *StartInstanceRequest) validate() error {
	if err := validateInstanceID("instance_id", r.InstanceID); err != nil {
		return err
	}
	if err := validateImage(r.Image); err != nil {
		return err
	}
	if len(r.Entrypoint) > 0 && r.Entrypoint[0] == "" {
		return fieldErr("entrypoint[0]", "must name an executable")
	}
	if err := validateArgs("entrypoint", r.Entrypoint); err != nil {
		return err
	}
	if err := validateArgs("command", r.Command); err != nil {
		return err
	}
	if err := validateEnv(r.Env); err != nil {
		return err
	}
	if r.Resources != nil {
		if err := r.Resources.validate(); err != nil {
			return err
		}
	}
	if err := r.RegistryAuth.validate(); err != nil {
		return err
	}
	if err := validateLabels(r.Labels); err != nil {
		return err
	}
	if err := validatePorts(r.Ports); err != nil {
		return err
	}
	if err := validateUlimits(r.Ulimits); err != nil {
		return err
	}
	if err := validateSSHKeys(r.SSHAuthorizedKeys); err != nil {
		return err
	}
	if err := validateVolumes(r.Volumes); err != nil {
		return err
	}
	if err := validateMIGProfile(r.MIGProfile, r.GPUCount, r.GPUs); err != nil {
		return err
	}
	return validateGPUs(r.GPUCount, r.GPUs)
}

// validatePorts checks the published ports: a container port and protocol
// each, listed once, at most hostport.MaxPorts of them.
func validatePorts(ports []PortRequest) error {
	if len(ports) > hostport.MaxPorts {
		return fieldErr("ports", "must list at most %d ports", hostport.MaxPorts)
	}
	seen := map[PortRequest]bool{}
	for i, p := range ports {
		if p.ContainerPort < 1 || p.ContainerPort > 65535 {
			return fieldErr(fmt.Sprintf("ports[%d].container_port", i), "must be between 1 and 65535")
		}
		if p.Protocol == "" {
			p.Protocol = hostport.TCP
		}
		if p.Protocol != hostport.TCP && p.Protocol != hostport.UDP {
			return fieldErr(fmt.Sprintf("ports[%d].protocol", i), "must be tcp or udp")
		}
		if seen[p] {
			return fieldErr("ports", "lists %s port %d twice", p.Protocol, p.ContainerPort)
		}
		seen[p] = true
	}
	return nil
}

// validateGPUs checks the form of a GPU request; whether the GPUs exist and
// are free is the allocator's to say.
func validateGPUs(count int, ids []string) error {
	switch {
	case count < 0 || count > maxGPUs:
		return fieldErr("gpu_count", "must be between 0 and %d", maxGPUs)
	case count > 0 && len(ids) > 0:
		return fieldErr("gpus", "give either gpu_count or gpus, not both")
	case len(ids) > maxGPUs:
		return fieldErr("gpus", "must list at most %d GPUs", maxGPUs)
	}
	seen := map[string]bool{}
	for i, id := range ids {
		field := fmt.Sprintf("gpus[%d]", i)
		if !isGPUIndex(id) && !isGPUUUID(id) {
			return fieldErr(field, "must be a GPU UUID (GPU-...), a MIG device UUID (MIG-...) or an index")
		}
		if seen[id] {
			return fieldErr(field, "names %s twice", id)
		}
		seen[id] = true
	}
	return nil
}

func isGPUIndex(s string) bool {
	if s == "" || len(s) > 4 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isGPUUUID(s string) bool {
	if gpu.IsMIGUUID(s) {
		return true
	}
	if !strings.HasPrefix(s, "GPU-") || len(s) > 64 || len(s) == 4 {
		return false
	}
	for i := 4; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' {
			return false
		}
	}
	return true
}

// validate checks a terminate request and returns its timeout in seconds.
func (r *TerminateInstanceRequest) validate() error {
	if err := validateInstanceID("instance_id", r.InstanceID); err != nil {
		return err
	}
	if t := r.TimeoutSeconds; t != nil && (*t < 0 || *t > maxStopTimeoutSeconds) {
		return fieldErr("timeout_seconds", "must be between 0 and %d", maxStopTimeoutSeconds)
	}
	return nil
}

// validateInstanceID accepts what every back end accepts (containerd's
// identifier rule, which Docker's container names include): letters and
// digits, optionally joined by single '.', '_' or '-', 1-63 characters. It
// is checked before anything is pulled or reserved.
func validateInstanceID(field, id string) error {
	if id == "" {
		return fieldErr(field, "is required")
	}
	if len(id) > maxInstanceIDLen {
		return fieldErr(field, "must be at most %d characters", maxInstanceIDLen)
	}
	if !isAlnum(id[0]) {
		return fieldErr(field, "must start with a letter or digit")
	}
	if !isAlnum(id[len(id)-1]) {
		return fieldErr(field, "must end with a letter or digit")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return fieldErr(field, "may contain only letters, digits, '_', '.' and '-'")
		}
		if !isAlnum(c) && !isAlnum(id[i-1]) {
			return fieldErr(field, "must not have two of '_', '.' and '-' in a row")
		}
	}
	if err := runtime.ValidateInstanceID(id); err != nil {
		return fieldErr(field, "%v", err)
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func validateImage(image string) error {
	if image == "" {
		return fieldErr("image", "is required")
	}
	if _, err := reference.ParseDockerRef(image); err != nil {
		return fieldErr("image", "is not a valid image reference: %v", err)
	}
	return nil
}

// maxArgBytes is the kernel's MAX_ARG_STRLEN less the terminating NUL: a
// longer argument or environment entry makes execve fail with E2BIG, after
// the container was created.
const maxArgBytes = 32*4096 - 1

// validateArgs rejects NUL, which cannot be passed to execve, and arguments
// execve refuses as too long. Empty arguments are legitimate.
func validateArgs(field string, args []string) error {
	for i, a := range args {
		if strings.ContainsRune(a, 0) {
			return fieldErr(fmt.Sprintf("%s[%d]", field, i), "must not contain NUL")
		}
		if len(a) > maxArgBytes {
			return fieldErr(fmt.Sprintf("%s[%d]", field, i), "must be at most %d bytes", maxArgBytes)
		}
	}
	return nil
}

func validateEnv(env map[string]string) error {
	if len(env) > maxEnvEntries {
		return fieldErr("env", "must have at most %d entries", maxEnvEntries)
	}
	for _, k := range sortedKeys(env) {
		switch {
		case k == "":
			return fieldErr("env", "variable names must not be empty")
		case strings.ContainsAny(k, "=\x00"):
			return fieldErr("env."+k, "variable name must not contain '=' or NUL")
		case strings.ContainsRune(env[k], 0):
			return fieldErr("env."+k, "value must not contain NUL")
		case len(k)+1+len(env[k]) > maxArgBytes:
			return fieldErr("env."+k, "variable must be at most %d bytes with its name", maxArgBytes)
		}
	}
	return nil
}

func (r *ResourcesRequest) validate() error {
	// Zero means the runtime's default, so only set values are checked.
	switch {
	case r.CPUs != 0 && (r.CPUs < minCPUs || r.CPUs > maxCPUs):
		return fieldErr("resources.cpus", "must be between %g and %d", minCPUs, maxCPUs)
	case r.MemoryMB != 0 && (r.MemoryMB < minMemoryMB || r.MemoryMB > maxSizeMB):
		return fieldErr("resources.memory_mb", "must be between %d and %d", minMemoryMB, maxSizeMB)
	case r.Pids < 0 || r.Pids > maxPids:
		return fieldErr("resources.pids", "must be greater than 0 and at most %d", maxPids)
	case r.ShmMB < 0 || r.ShmMB > maxSizeMB:
		return fieldErr("resources.shm_mb", "must be greater than 0 and at most %d", maxSizeMB)
	case r.DiskGB < 0 || r.DiskGB > maxDiskGB:
		return fieldErr("resources.disk_gb", "must be greater than 0 and at most %d", maxDiskGB)
	case r.EgressMbps < 0 || r.EgressMbps > runtime.MaxBandwidthMbps:
		return fieldErr("resources.egress_mbps", "must be between 0 (the host's default) and %d Mbit/s", runtime.MaxBandwidthMbps)
	case r.IngressMbps < 0 || r.IngressMbps > runtime.MaxBandwidthMbps:
		return fieldErr("resources.ingress_mbps", "must be between 0 (the host's default) and %d Mbit/s", runtime.MaxBandwidthMbps)
	}
	return nil
}

func validateLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return fieldErr("labels", "must have at most %d entries", maxLabels)
	}
	for _, k := range sortedKeys(labels) {
		if k == "" {
			return fieldErr("labels", "keys must not be empty")
		}
		if len(k) > maxLabelKeyLen {
			return fieldErr("labels."+k, "key must be at most %d characters", maxLabelKeyLen)
		}
		for i := 0; i < len(k); i++ {
			if c := k[i]; !isAlnum(c) && c != '.' && c != '_' && c != '/' && c != '-' {
				return fieldErr("labels."+k, "key may contain only letters, digits, '.', '_', '/' and '-'")
			}
		}
		v := labels[k]
		if strings.ContainsRune(v, 0) {
			return fieldErr("labels."+k, "value must not contain NUL")
		}
		if max := maxLabelBytes - len(runtime.LabelUserPrefix) - len(k); len(v) > max {
			return fieldErr("labels."+k, "value must be at most %d bytes with this key", max)
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// validate checks credentials for a pull (a start's or a pre-pull's); nil
// is valid.
func (a *RegistryAuthRequest) validate() error {
	if a == nil {
		return nil
	}
	if strings.ContainsRune(a.Username, 0) {
		return fieldErr("registry_auth.username", "must not contain NUL")
	}
	if strings.ContainsRune(a.Password, 0) {
		return fieldErr("registry_auth.password", "must not contain NUL")
	}
	if a.Username == "" && a.Password != "" {
		return fieldErr("registry_auth.username", "is required with a password")
	}
	return nil
}

// toRuntime is the credentials for the runtime: nil when there are none.
func (a *RegistryAuthRequest) toRuntime() *runtime.RegistryAuth {
	if a == nil || (a.Username == "" && a.Password == "") {
		return nil
	}
	return &runtime.RegistryAuth{Username: a.Username, Password: a.Password}
}
