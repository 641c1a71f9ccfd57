package runtime

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
	// LabelUserPrefix starts the caller's own labels.
	LabelUserPrefix = LabelPrefix + "user."
)

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
