// Package selftest checks that this host can run rentals: the container
// runtime, runc, the CNI plugins, the CDI specs, the NVIDIA driver and each
// GPU's link and health, disk, the host port range, and a real test rental.
// `host-agent selftest` prints its result, and the agent runs it at start and
// logs it. Each failure says how to fix it. Only cmd/ imports it.
package selftest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Status of one check.
type Status string

// Statuses. A warning does not fail the self-test; a failure does.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
	Skip Status = "skip"
)

// Result is one check's outcome.
type Result struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	// Detail says what was found.
	Detail string `json:"detail"`
	// Fix says what to do about a failure or warning.
	Fix string `json:"fix,omitempty"`
}

// Report is the whole self-test.
type Report struct {
	Passed  bool      `json:"passed"`
	Results []Result  `json:"results"`
	RanAt   time.Time `json:"ran_at"`
}

// Check is one named check.
type Check struct {
	Name string
	Run  func(ctx context.Context) Result
}

// Run runs checks in order; each gets its name filled in and a bounded
// context.
func Run(ctx context.Context, checks []Check, perCheck time.Duration) Report {
	rep := Report{Passed: true, RanAt: time.Now().UTC()}
	for _, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, perCheck)
		r := c.Run(cctx)
		cancel()
		r.Name = c.Name
		if r.Status == Fail {
			rep.Passed = false
		}
		rep.Results = append(rep.Results, r)
	}
	return rep
}

// WriteTable prints the report as a table, fixes under their check.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
	for _, res := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", res.Name, strings.ToUpper(string(res.Status)), res.Detail)
		if res.Fix != "" {
			fmt.Fprintf(tw, "\t\tfix: %s\n", res.Fix)
		}
	}
	verdict := "PASSED"
	if !r.Passed {
		verdict = "FAILED"
	}
	fmt.Fprintf(tw, "\nself-test %s\n", verdict)
	return tw.Flush()
}

// WriteJSON prints the report as JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Failures lists the failed checks' names, for a log line.
func (r Report) Failures() []string {
	var out []string
	for _, res := range r.Results {
		if res.Status == Fail {
			out = append(out, res.Name)
		}
	}
	return out
}

func ok(format string, args ...any) Result {
	return Result{Status: OK, Detail: fmt.Sprintf(format, args...)}
}

func skip(format string, args ...any) Result {
	return Result{Status: Skip, Detail: fmt.Sprintf(format, args...)}
}

func fail(fix, format string, args ...any) Result {
	return Result{Status: Fail, Detail: fmt.Sprintf(format, args...), Fix: fix}
}

func warn(fix, format string, args ...any) Result {
	return Result{Status: Warn, Detail: fmt.Sprintf(format, args...), Fix: fix}
}
