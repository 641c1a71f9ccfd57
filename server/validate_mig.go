package server

import "github.com/host-agent/host-agent/gpu"

// validateMIGProfile checks a start's mig_profile: a MIG profile name
// ("1g.10gb", "3g.40gb", "1g.20gb+me"), asked for alone. Whether the host
// has a free one is the allocator's to say (409).
func validateMIGProfile(profile string, count int, ids []string) error {
	switch {
	case profile == "":
		return nil
	case !gpu.ValidMIGProfile(profile):
		return fieldErr("mig_profile", "must be a MIG profile such as 1g.10gb, 2g.20gb or 3g.40gb, got %q", profile)
	case count > 0:
		return fieldErr("mig_profile", "give either mig_profile or gpu_count, not both")
	case len(ids) > 0:
		return fieldErr("mig_profile", "give either mig_profile or gpus, not both")
	}
	return nil
}
