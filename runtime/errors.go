package runtime

import (
	"context"
	"fmt"
	"time"

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

// DrainingError refuses a new rental, a pre-pull or a new volume because
// the host is drained (POST /drain): the API answers 503 with code
// "draining" and Reason.
type DrainingError struct{ Reason string }

func (e *DrainingError) Error() string { return "host is draining: " + e.Reason }

// DrainState reads whether the host is drained, where the back end keeps
// it (so that it survives an agent restart): why, since when.
type DrainState interface {
	Drained(ctx context.Context) (reason string, since time.Time, drained bool, err error)
}
