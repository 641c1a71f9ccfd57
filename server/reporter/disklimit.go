package reporter

// DiskLimitInfo says how rentals' disk limits are enforced on this host
// (runtime/disk): "hard" where the file system refuses writes past a limit,
// "watched" where the agent measures writable layers and stops a rental
// over its limit; why says what decided it.
type DiskLimitInfo struct {
	Mode string `json:"mode"`
	Why  string `json:"why"`
	// AllocatedBytes is the rentals' disk limits summed.
	AllocatedBytes uint64 `json:"allocated_bytes"`
}
