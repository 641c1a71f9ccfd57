package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Stage results.
const (
	statusPass    = "pass"
	statusFail    = "fail"
	statusSkipped = "skipped"
)

// StageResult is one stage's outcome in the report.
type StageResult struct {
	Number  int     `json:"number"`
	Name    string  `json:"name"`
	Status  string  `json:"status"`
	Seconds float64 `json:"seconds"`
	// Error is why a stage failed; Reason why it was skipped.
	Error  string `json:"error,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Details is what the stage found, for the reader of the report.
	Details any `json:"details,omitempty"`
}

// Report is what --json writes.
type Report struct {
	Mock       bool          `json:"mock"`
	DriverRoot string        `json:"driver_root"`
	DevRoot    string        `json:"dev_root"`
	NVMLPath   string        `json:"nvml_library"`
	Host       HostInfo      `json:"host"`
	Started    time.Time     `json:"started"`
	Seconds    float64       `json:"seconds"`
	Stages     []StageResult `json:"stages"`
	Summary    string        `json:"summary"`
	Passed     bool          `json:"passed"`
}

// skip is returned by a stage that did not run, with the reason.
type skip struct{ reason string }

func (s skip) Error() string { return s.reason }

func skipped(format string, args ...any) error { return skip{fmt.Sprintf(format, args...)} }

// stage is one step of the check. It returns what it found (printed and
// reported) and an error when it failed or, as a skip, did not run.
type stage struct {
	name    string
	timeout time.Duration
	run     func(ctx context.Context, out io.Writer) (details any, err error)
}

// runStage runs s bounded by its timeout and prints its result before it
// returns. A stage stuck in a call that ignores its context (a hung NVML
// call) is abandoned at the deadline: its goroutine is left behind and the
// check goes on, since the process ends soon after anyway.
func runStage(ctx context.Context, out io.Writer, n int, s stage) StageResult {
	fmt.Fprintf(out, "\n== stage %d: %s (at most %s)\n", n, s.name, s.timeout)
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	type result struct {
		details any
		err     error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- result{err: fmt.Errorf("panicked: %v", r)}
			}
		}()
		d, err := s.run(ctx, out)
		done <- result{d, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		// Give a stage that honours its context a moment to return
		// what it has and clean up.
		select {
		case r = <-done:
		case <-time.After(10 * time.Second):
			r = result{err: fmt.Errorf("did not finish within %s", s.timeout)}
		}
		if r.err == nil {
			r.err = fmt.Errorf("did not finish within %s", s.timeout)
		}
	}
	res := StageResult{Number: n, Name: s.name, Status: statusPass, Seconds: time.Since(start).Seconds(), Details: r.details}
	var sk skip
	switch {
	case errors.As(r.err, &sk):
		res.Status, res.Reason = statusSkipped, sk.reason
	case r.err != nil:
		res.Status, res.Error = statusFail, r.err.Error()
	}
	line := fmt.Sprintf("-- stage %d (%s): %s", n, s.name, strings.ToUpper(res.Status))
	switch {
	case res.Error != "":
		line += ": " + res.Error
	case res.Reason != "":
		line += ": " + res.Reason
	}
	fmt.Fprintf(out, "%s (%.1fs)\n", line, res.Seconds)
	return res
}

// summary is the one line that says which stages passed, e.g.
// "gpu-check: 4/5 passed: 1 nvml PASS, ..., 5 container SKIPPED (why)".
func summary(stages []StageResult) (line string, passed bool) {
	parts := make([]string, len(stages))
	n, failed := 0, false
	for i, s := range stages {
		parts[i] = fmt.Sprintf("%d %s %s", s.Number, s.Name, strings.ToUpper(s.Status))
		switch s.Status {
		case statusPass:
			n++
		case statusFail:
			failed = true
		case statusSkipped:
			parts[i] += " (" + s.Reason + ")"
		}
	}
	verdict := "PASS"
	if failed {
		verdict = "FAIL"
	}
	return fmt.Sprintf("gpu-check %s: %d/%d stages passed: %s", verdict, n, len(stages), strings.Join(parts, ", ")), !failed
}

// writeJSON writes the report atomically, so that a reader never sees half.
func writeJSON(path string, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
