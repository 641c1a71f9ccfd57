package runtime

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Labels the agent puts on every rental's container (containerd labels, or
// Docker labels in fallback mode). They hold everything the agent needs after
// a restart, so that nothing lives only in its memory. Operators see them with
// `ctr -n rentals containers info <id>`.
const (
	// LabelPrefix starts every label the agent owns.
	LabelPrefix = "host-agent.io/"

	// LabelInstanceID marks a container as a rental and names it.
	LabelInstanceID = LabelPrefix + "instance-id"
	// LabelAgentID names the agent that created the container.
	LabelAgentID = LabelPrefix + "agent-id"
	// LabelSpecHash is InstanceSpec.Hash of the request that created it,
	// compared when the same instance ID is started again.
	LabelSpecHash = LabelPrefix + "spec-hash"
	// LabelImage is the image reference as requested.
	LabelImage = LabelPrefix + "image"
	// LabelCreatedAt is when the agent created the container (RFC 3339).
	LabelCreatedAt = LabelPrefix + "created-at"
	// LabelStartedAt is when its task was started (RFC 3339).
	LabelStartedAt = LabelPrefix + "started-at"
	// LabelLogPath is the file the shim writes the task's output to.
	LabelLogPath = LabelPrefix + "log-path"
	// LabelExitCode and LabelFinishedAt record an exit once the agent has
	// reported it, so an exit is reported once and its code kept even if
	// the task is gone.
	LabelExitCode   = LabelPrefix + "exit-code"
	LabelFinishedAt = LabelPrefix + "finished-at"
	// ExitCodeUnknown is LabelExitCode's value for an exit whose code the
	// runtime lost (containerd reaps a task that exited while it was down).
	ExitCodeUnknown = "unknown"
	// LabelOOMKilled is "true" once the kernel has killed a process of the
	// instance for exceeding its memory limit.
	LabelOOMKilled = LabelPrefix + "oom-killed"
	// LabelExitReason says why the agent stopped the instance on its own
	// account (ExitReasonDiskLimit), written before it is stopped so that
	// the exit reports it whenever it is read, across agent restarts.
	LabelExitReason = LabelPrefix + "exit-reason"
	// LabelDiskLimitBytes is the limit of the instance's writable layer in
	// bytes, recorded by runtime/disk's reservation (its labels share the
	// prefix LabelPrefix + "disk.").
	LabelDiskLimitBytes = LabelPrefix + "disk.limit-bytes"
	// LabelGPUs lists the UUIDs of the GPUs the instance holds, comma
	// separated; the allocation table is rebuilt from it after a restart.
	LabelGPUs = LabelPrefix + "gpus"
	// LabelGPUIndexes lists their NVML indexes, in the same order.
	LabelGPUIndexes = LabelPrefix + "gpu-indexes"
	// LabelPorts lists the published ports ("tcp/22:40017,udp/53:40018",
	// hostport.Format), written before the network is set up so that a host
	// port is never handed out twice across restarts.
	LabelPorts = LabelPrefix + "ports"
	// LabelNetNS is the path of the instance's pinned network namespace.
	LabelNetNS = LabelPrefix + "netns"
	// LabelIP is the instance's address on the rentals' bridge.
	LabelIP = LabelPrefix + "ip"
	// LabelScope marks the rentals of a back end opened for a user of the
	// runtime other than the agent (the self-test's test rentals), which the
	// agent's own back end neither lists nor reports.
	LabelScope = LabelPrefix + "scope"
	// LabelUserPrefix starts the caller's own labels.
	LabelUserPrefix = LabelPrefix + "user."
)

// containerLabelKeys are the keys of a rental's container the agent owns:
// SealLabels sets each of them on every container, empty where unused.
var containerLabelKeys = []string{
	LabelInstanceID, LabelAgentID, LabelSpecHash, LabelImage, LabelCreatedAt, LabelStartedAt,
	LabelLogPath, LabelExitCode, LabelFinishedAt, LabelOOMKilled, LabelGPUs, LabelGPUIndexes,
	LabelPorts, LabelNetNS, LabelIP, LabelScope, LabelExitReason, LabelBandwidth,
}

// RequestLabels record who a rental is and what was asked (hash is
// spec.Hash()): its ID, spec hash and image, the caller's labels under
// LabelUserPrefix, its bandwidth, and the reservations of its admission.
// The Lifecycle assembles them once a start is admitted
// (InstanceSpec.ContainerLabels).
func RequestLabels(spec InstanceSpec, hash string) map[string]string {
	labels := map[string]string{
		LabelInstanceID: spec.ID,
		LabelSpecHash:   hash,
		LabelImage:      spec.Image,
	}
	for k, v := range spec.Labels {
		labels[LabelUserPrefix+k] = v
	}
	if bw := BandwidthOf(spec).String(); bw != "" {
		labels[LabelBandwidth] = bw
	}
	maps.Copy(labels, spec.ReservedLabels)
	return labels
}

// RentalLabels are the labels a back end creates a rental's container
// with: RequestLabels, the agent's ID and the time of creation. A back end
// adds what only it knows, then seals them (SealLabels).
func RentalLabels(spec InstanceSpec, hash, agentID string, now time.Time) map[string]string {
	labels := RequestLabels(spec, hash)
	labels[LabelAgentID] = agentID
	labels[LabelCreatedAt] = now.UTC().Format(time.RFC3339Nano)
	return labels
}

// CreationLabels are RentalLabels from the labels the Lifecycle assembled
// (ContainerLabels; assembled here from the spec when it has none, for a
// back end used on its own).
func (s InstanceSpec) CreationLabels(agentID string, now time.Time) map[string]string {
	labels := maps.Clone(s.ContainerLabels)
	if labels == nil {
		labels = RequestLabels(s, s.Hash())
	}
	labels[LabelAgentID] = agentID
	labels[LabelCreatedAt] = now.UTC().Format(time.RFC3339Nano)
	return labels
}

// SealLabels completes a container's labels so that the image cannot add
// or change one of the agent's: dockerd copies every label of the image
// that the container lacks, so `LABEL host-agent.io/scope=x` would hide a
// rental from its agent and `LABEL host-agent.io/gpus=...` corrupt the
// reservations rebuilt at restart. Every key the agent owns is set (empty
// where unused), and so is every key under LabelPrefix that imageLabels
// has and labels lack (empty: a label the image carries under the agent's
// prefix means nothing). labels is changed and returned.
func SealLabels(labels, imageLabels map[string]string) map[string]string {
	for _, k := range containerLabelKeys {
		if _, ok := labels[k]; !ok {
			labels[k] = ""
		}
	}
	for k := range imageLabels {
		if _, ok := labels[k]; !ok && strings.HasPrefix(k, LabelPrefix) {
			labels[k] = ""
		}
	}
	return labels
}

// LabelsProblem compares the agent's labels of a created container (got)
// with those it was created with (sent), and says how they differ, or "".
// An empty label is an absent one (containerd drops empty labels). A
// container with a difference is not the agent's to run: the back end
// removes it and refuses the start.
func LabelsProblem(sent, got map[string]string) string {
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range sent {
		keys[k] = true
	}
	var diff []string
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if strings.HasPrefix(k, LabelPrefix) && sent[k] != got[k] {
			diff = append(diff, fmt.Sprintf("%s=%q (want %q)", k, got[k], sent[k]))
		}
	}
	if len(diff) == 0 {
		return ""
	}
	return "the container's agent labels differ from those it was created with: " + strings.Join(diff, ", ")
}

// UserLabels returns the caller's labels found in a container's labels,
// without LabelUserPrefix.
func UserLabels(labels map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range labels {
		if len(k) > len(LabelUserPrefix) && k[:len(LabelUserPrefix)] == LabelUserPrefix {
			out[k[len(LabelUserPrefix):]] = v
		}
	}
	return out
}
