// Package disk keeps rentals from filling the disk the container runtime
// keeps images and writable layers on. Limits is the runtime.ReservationKind
// giving every rental a limit on its writable layer and refusing a start
// whose limit does not fit; Watcher enforces the limits where no file
// system quota does (ProjectQuotas says which); Reserve, an admission
// step holding nothing, only refuses a start while free space is below the
// reserve. internal/agent builds
// Limits, with every other kind.
package disk

import (
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/hostinfo"
)

// Reserve refuses starts while the file system holding Path has less than
// Bytes free (what an unprivileged writer may use, as df's Avail).
type Reserve struct {
	Path  string
	Bytes uint64
}

var _ runtime.Admission = Reserve{}

// FullError refuses a start for want of disk space. It names the field
// "disk" and is an errdefs.ResourceExhausted.
type FullError struct{ Msg string }

func (e *FullError) Error() string { return e.Msg }

// ErrorField names what the caller should look at.
func (e *FullError) ErrorField() string { return "disk" }

// Unwrap makes it an errdefs.ResourceExhausted.
func (e *FullError) Unwrap() error { return errdefs.ErrResourceExhausted }

// Free returns the free bytes at path.
func Free(path string) (uint64, error) { return hostinfo.FreeBytes(path) }

// Name implements runtime.Admission.
func (Reserve) Name() string { return "disk" }

// Reserve implements runtime.Admission: it holds nothing, and refuses
// the start when free space is below the reserve. A path that cannot be
// read refuses nothing: the pull reports a full disk itself.
func (d Reserve) Reserve(*runtime.InstanceSpec) (map[string]string, error) {
	if d.Bytes == 0 {
		return nil, nil
	}
	free, err := Free(d.Path)
	if err != nil {
		return nil, nil
	}
	if free < d.Bytes {
		return nil, &FullError{Msg: fmt.Sprintf("the host's disk at %s has %d MiB free, below its reserve of %d MiB", d.Path, free>>20, d.Bytes>>20)}
	}
	return nil, nil
}
