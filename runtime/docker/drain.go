package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// drainFile holds the drained state in Options.StateDir: Docker has no
// place for a host-wide label, and the state must survive agent restarts.
const drainFile = "drain.json"

type drainState struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

func (r *Runtime) drainPath() string { return filepath.Join(r.opts.StateDir, drainFile) }

// SetDrain marks the host drained with reason at the time given. A drain
// of a drained host keeps its original time and takes the new reason.
func (r *Runtime) SetDrain(ctx context.Context, reason string, at time.Time) error {
	if reason == "" {
		reason = "drained"
	}
	r.drainMu.Lock()
	defer r.drainMu.Unlock()
	st := drainState{Reason: reason, Since: at.UTC()}
	if old, ok, err := r.readDrain(); err != nil {
		return err
	} else if ok {
		st.Since = old.Since
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := r.drainPath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	if err := os.Rename(tmp, r.drainPath()); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}

// ClearDrain removes the drained state; clearing an undrained host is not
// an error.
func (r *Runtime) ClearDrain(ctx context.Context) error {
	r.drainMu.Lock()
	defer r.drainMu.Unlock()
	if err := os.Remove(r.drainPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("undrain: %w", err)
	}
	return nil
}

// Drained reads the drained state back.
func (r *Runtime) Drained(ctx context.Context) (reason string, since time.Time, drained bool, err error) {
	r.drainMu.Lock()
	defer r.drainMu.Unlock()
	st, ok, err := r.readDrain()
	return st.Reason, st.Since, ok, err
}

func (r *Runtime) readDrain() (drainState, bool, error) {
	b, err := os.ReadFile(r.drainPath())
	if errors.Is(err, os.ErrNotExist) {
		return drainState{}, false, nil
	}
	if err != nil {
		return drainState{}, false, fmt.Errorf("read drain state: %w", err)
	}
	var st drainState
	if err := json.Unmarshal(b, &st); err != nil {
		return drainState{}, false, fmt.Errorf("read drain state %s: %w", r.drainPath(), err)
	}
	return st, st.Reason != "", nil
}
