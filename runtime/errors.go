package runtime

import "fmt"

// Steps of Start, named in a StepError.
const (
	StepAllocate = "allocate"
	StepPull     = "pull"
	StepCreate   = "create"
	StepStart    = "start"
)

// StepError says which step of starting an instance failed. It unwraps to the
// cause, which carries an errdefs kind.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return fmt.Sprintf("%s: %v", e.Step, e.Err) }

func (e *StepError) Unwrap() error { return e.Err }
