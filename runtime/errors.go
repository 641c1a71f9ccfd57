package runtime

import (
	"fmt"

	"github.com/containerd/errdefs"
)

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

// FieldError refuses a request because of one of its fields: it is an
// InvalidArgument, and its ErrorField names the field (the API answers 400
// naming it).
func FieldError(field, msg string) error { return &fieldError{field: field, msg: msg} }

// fieldError refuses a request because of one of its fields.
type fieldError struct{ field, msg string }

func (e *fieldError) Error() string      { return e.field + ": " + e.msg }
func (e *fieldError) ErrorField() string { return e.field }
func (e *fieldError) Unwrap() error      { return errdefs.ErrInvalidArgument }
