package containerd

import (
	"log/slog"

	contribapparmor "github.com/containerd/containerd/v2/contrib/apparmor"
	"github.com/containerd/containerd/v2/pkg/apparmor"
)

// AppArmorProfile is the profile rentals run under where the host has
// AppArmor: containerd's default template, as Docker's docker-default.
const AppArmorProfile = "host-agent-default"

// loadAppArmor loads AppArmorProfile where the host has AppArmor and
// returns its name, or "" where it has none. A host with AppArmor on which
// the profile cannot be loaded (no apparmor_parser, no CAP_MAC_ADMIN)
// answers "" with an error logged: rentals then run as on a host without
// AppArmor, confined by everything else, and the log says how to fix it.
func loadAppArmor(log *slog.Logger) string {
	if !apparmor.HostSupports() {
		log.Info("the host has no AppArmor: rentals run without an AppArmor profile")
		return ""
	}
	if err := contribapparmor.LoadDefaultProfile(AppArmorProfile); err != nil {
		log.Error("the host has AppArmor but the rentals' profile could not be loaded; rentals run without one (install apparmor_parser and give the agent CAP_MAC_ADMIN)",
			"profile", AppArmorProfile, "error", err)
		return ""
	}
	log.Info("rentals run under the AppArmor profile", "profile", AppArmorProfile)
	return AppArmorProfile
}
