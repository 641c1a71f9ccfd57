package runtime

import (
	"context"
	"io"
)

// MaxFollowBytes caps the bytes one FollowLogs call sends; a client that
// wants more asks again from the offset it got.
const MaxFollowBytes = 64 << 20

// LogFollower streams an instance's output as it is written. A back end
// that can implements it; the Lifecycle passes it through.
type LogFollower interface {
	// FollowLogs writes the instance's output to w from byte offset from
	// of its log (below zero: from the start of its last tail lines),
	// calling flush after each write, until the instance has exited and
	// everything it wrote is sent, ctx is done, or maxBytes are sent. It
	// returns the offset to resume from, and truncated when it stopped at
	// maxBytes.
	FollowLogs(ctx context.Context, id string, from int64, tail int, maxBytes int64, w io.Writer, flush func()) (next int64, truncated bool, err error)
	// LogOffset is the offset of the end of the instance's log now.
	LogOffset(ctx context.Context, id string) (int64, error)
}
