package containerd

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
)

// Drain state lives on containerd, as labels of the rentals' namespace
// (`ctr namespaces label rentals`), so that it survives an agent restart and
// an operator can read or clear it with ctr alone.
const (
	// LabelDrainReason holds why the host is drained; its presence is the
	// drained state.
	LabelDrainReason = "host-agent.io/drain-reason"
	// LabelDrainedAt holds when it was drained, RFC 3339.
	LabelDrainedAt = "host-agent.io/drained-at"
)

// SetDrain marks the namespace drained with reason at the time given. A
// drain of a drained namespace keeps its original time and takes the new
// reason.
func (r *Runtime) SetDrain(ctx context.Context, reason string, at time.Time) error {
	if reason == "" {
		reason = "drained"
	}
	ns := r.client.NamespaceService()
	labels, err := ns.Labels(ctx, r.opts.Namespace)
	if errdefs.IsNotFound(err) {
		// No rental ever ran here: the namespace is created to hold the state.
		err = ns.Create(ctx, r.opts.Namespace, map[string]string{
			LabelDrainReason: reason,
			LabelDrainedAt:   at.UTC().Format(time.RFC3339Nano),
		})
		if err == nil || !errdefs.IsAlreadyExists(err) {
			return wrapDrainErr("drain", err)
		}
		labels, err = ns.Labels(ctx, r.opts.Namespace)
	}
	if err != nil {
		return wrapDrainErr("drain", err)
	}
	if labels[LabelDrainedAt] == "" {
		if err := ns.SetLabel(ctx, r.opts.Namespace, LabelDrainedAt, at.UTC().Format(time.RFC3339Nano)); err != nil {
			return wrapDrainErr("drain", err)
		}
	}
	return wrapDrainErr("drain", ns.SetLabel(ctx, r.opts.Namespace, LabelDrainReason, reason))
}

// ClearDrain removes the drained state; clearing an undrained namespace is
// not an error.
func (r *Runtime) ClearDrain(ctx context.Context) error {
	ns := r.client.NamespaceService()
	for _, k := range []string{LabelDrainReason, LabelDrainedAt} {
		// An empty value deletes the label.
		if err := ns.SetLabel(ctx, r.opts.Namespace, k, ""); err != nil && !errdefs.IsNotFound(err) {
			return wrapDrainErr("undrain", err)
		}
	}
	return nil
}

// Drained reads the drained state back from containerd.
func (r *Runtime) Drained(ctx context.Context) (reason string, since time.Time, drained bool, err error) {
	labels, err := r.client.NamespaceService().Labels(ctx, r.opts.Namespace)
	if errdefs.IsNotFound(err) {
		return "", time.Time{}, false, nil
	}
	if err != nil {
		return "", time.Time{}, false, wrapDrainErr("read drain state", err)
	}
	reason, drained = labels[LabelDrainReason]
	if t, perr := time.Parse(time.RFC3339Nano, labels[LabelDrainedAt]); perr == nil {
		since = t
	}
	return reason, since, drained && reason != "", nil
}

func wrapDrainErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, convertErr(err))
}
