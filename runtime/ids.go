package runtime

import (
	"fmt"
	"regexp"

	"github.com/containerd/errdefs"
)

// MaxInstanceIDLen bounds an instance ID; containerd allows 76 characters,
// and 63 leaves room for a prefix on Docker names and host names.
const MaxInstanceIDLen = 63

// instanceIDPattern is containerd's identifier rule (pkg/identifiers): runs
// of letters and digits joined by single '.', '_' or '-'. It is a subset of
// Docker's container name rule ([a-zA-Z0-9][a-zA-Z0-9_.-]+), so an ID valid
// here names a container on either back end.
var instanceIDPattern = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

// ValidateInstanceID checks id against every back end's rules, so that a bad
// ID is refused before anything is pulled or reserved. The error is an
// InvalidArgument that says what is wrong.
func ValidateInstanceID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("instance ID is required: %w", errdefs.ErrInvalidArgument)
	case len(id) > MaxInstanceIDLen:
		return fmt.Errorf("instance ID must be at most %d characters: %w", MaxInstanceIDLen, errdefs.ErrInvalidArgument)
	case !instanceIDPattern.MatchString(id):
		return fmt.Errorf("instance ID %q must be letters and digits, optionally joined by single '.', '_' or '-', and start and end with a letter or digit: %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}
