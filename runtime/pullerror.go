package runtime

// Kinds of a failed pull, named in PullError and in the API's error code.
const (
	PullNotFound     = "not_found"
	PullUnauthorized = "unauthorized"
	PullDiskFull     = "disk_full"
	PullStalled      = "stalled"
)

// PullError names what went wrong with a pull. It unwraps to the cause,
// which carries an errdefs kind.
type PullError struct {
	Kind string
	Err  error
}

func (e *PullError) Error() string { return e.Err.Error() }

func (e *PullError) Unwrap() error { return e.Err }
