package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gorilla/websocket"

	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/server"
	"github.com/host-agent/host-agent/server/reporter"
)

// Exit codes of the client commands (documented in the usage and the
// README): 0 done, 1 the agent refused or could not be reached, 2 a usage
// error.
const (
	exitOK       = 0
	exitFailed   = 1
	exitUsageErr = 2
)

// clientCommands are the commands that call the local agent's API.
var clientCommands = map[string]func(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) int{
	"status":  cmdStatus,
	"ls":      cmdList,
	"inspect": cmdInspect,
	"logs":    cmdLogs,
	"events":  cmdEvents,
	"drain":   cmdDrain,
	"undrain": cmdUndrain,
	"images":  cmdImages,
	"pull":    cmdPull,
}

// runClient runs client command name: it finds the agent (newAPIClient),
// stops on SIGINT or SIGTERM, and maps what went wrong to an exit code.
func runClient(name string, args []string, stdout, stderr io.Writer) int {
	fn := clientCommands[name]
	c, err := newAPIClient(os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "host-agent %s: %v\n", name, err)
		return exitFailed
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return fn(ctx, c, args, stdout, stderr)
}

// flags parses a command's flags; positional arguments are returned. A
// flag may come before or after them (logs ID -f reads as logs -f ID).
func flags(name string, args []string, stderr io.Writer, positional int, define func(*flag.FlagSet)) ([]string, bool) {
	fs := flag.NewFlagSet("host-agent "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	define(fs)
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, false
		}
		if fs.NArg() == 0 {
			break
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(rest) != positional {
		want := "no argument"
		if positional == 1 {
			want = "one argument"
		}
		fmt.Fprintf(stderr, "host-agent %s: takes %s, got %d\n", name, want, len(rest))
		fs.Usage()
		return nil, false
	}
	return rest, true
}

// fail prints err for command name and returns exitFailed.
func fail(stderr io.Writer, name string, err error) int {
	if errors.Is(err, context.Canceled) {
		return exitOK
	}
	fmt.Fprintf(stderr, "host-agent %s: %v\n", name, err)
	return exitFailed
}

func timed(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, clientTimeout)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// statusReport is what `status --json` prints.
type statusReport struct {
	Ready      bool                 `json:"ready"`
	NotReady   string               `json:"not_ready,omitempty"`
	Host       *reporter.HostReport `json:"host,omitempty"`
	HostError  string               `json:"host_error,omitempty"`
	Instances  int                  `json:"instances"`
	Running    int                  `json:"running"`
	GPUsFree   int                  `json:"gpus_free"`
	GPUsTotal  int                  `json:"gpus_total"`
	AgentURL   string               `json:"agent_url"`
	ListFailed string               `json:"list_error,omitempty"`
}

// cmdStatus: is the agent ready, on which runtime, drained or not, how many
// rentals and free GPUs. Exit 1 when it is not ready.
func cmdStatus(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	if _, ok := flags("status", args, stderr, 0, func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print JSON") }); !ok {
		return exitUsageErr
	}
	ctx, cancel := timed(ctx)
	defer cancel()
	rep := statusReport{AgentURL: c.base.String()}
	var ready server.StatusResponse
	if err := c.getJSON(ctx, "/readyz", nil, &ready); err != nil {
		var ae *apiError
		if !errors.As(err, &ae) {
			return fail(stderr, "status", err)
		}
		rep.NotReady = ae.Msg
	} else {
		rep.Ready = true
	}
	var host reporter.HostReport
	if err := c.getJSON(ctx, "/host", nil, &host); err != nil {
		rep.HostError = err.Error()
	} else {
		rep.Host = &host
		for _, g := range host.GPUs {
			rep.GPUsTotal++
			if g.Healthy && g.HeldBy == "" {
				rep.GPUsFree++
			}
		}
	}
	var list server.ListInstancesResponse
	if err := c.getJSON(ctx, "/instances", nil, &list); err != nil {
		rep.ListFailed = err.Error()
	}
	rep.Instances = len(list.Instances)
	for _, i := range list.Instances {
		if i.Status == "running" {
			rep.Running++
		}
	}
	if asJSON {
		if err := printJSON(stdout, rep); err != nil {
			return fail(stderr, "status", err)
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		state := "ready"
		if !rep.Ready {
			state = "NOT READY: " + rep.NotReady
		}
		fmt.Fprintf(tw, "agent\t%s\n", rep.AgentURL)
		fmt.Fprintf(tw, "state\t%s\n", state)
		if h := rep.Host; h != nil {
			fmt.Fprintf(tw, "agent id\t%s\n", h.AgentID)
			fmt.Fprintf(tw, "version\t%s %s\n", h.AgentVersion, h.AgentCommit)
			fmt.Fprintf(tw, "runtime\t%s %s (namespace %s)\n", h.Runtime.Name, h.Runtime.Version, h.Runtime.Namespace)
			if h.Drain != nil {
				fmt.Fprintf(tw, "drained\tyes: %s\n", h.Drain.Reason)
			} else {
				fmt.Fprintf(tw, "drained\tno\n")
			}
			for _, w := range h.Warnings {
				fmt.Fprintf(tw, "warning\t%s\n", w)
			}
		} else {
			fmt.Fprintf(tw, "host\t%s\n", rep.HostError)
		}
		fmt.Fprintf(tw, "rentals\t%d (%d running)\n", rep.Instances, rep.Running)
		fmt.Fprintf(tw, "gpus\t%d free of %d\n", rep.GPUsFree, rep.GPUsTotal)
		tw.Flush()
	}
	if !rep.Ready {
		return exitFailed
	}
	return exitOK
}

// cmdList: every rental, one a line, or the API's answer with --json.
func cmdList(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	if _, ok := flags("ls", args, stderr, 0, func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print the API's JSON") }); !ok {
		return exitUsageErr
	}
	ctx, cancel := timed(ctx)
	defer cancel()
	var list server.ListInstancesResponse
	if err := c.getJSON(ctx, "/instances", nil, &list); err != nil {
		return fail(stderr, "ls", err)
	}
	if asJSON {
		if err := printJSON(stdout, list); err != nil {
			return fail(stderr, "ls", err)
		}
		return exitOK
	}
	sort.Slice(list.Instances, func(i, j int) bool { return list.Instances[i].InstanceID < list.Instances[j].InstanceID })
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tSTATUS\tIMAGE\tGPUS\tPORTS\tCREATED")
	for _, i := range list.Instances {
		status := i.Status
		if i.ExitCode != nil {
			status += " (" + strconv.Itoa(*i.ExitCode) + ")"
		}
		if i.OOMKilled {
			status += " oom"
		}
		var gpus, ports []string
		for _, g := range i.GPUs {
			gpus = append(gpus, strconv.Itoa(g.Index))
		}
		for _, p := range i.Ports {
			ports = append(ports, fmt.Sprintf("%d->%d/%s", p.HostPort, p.ContainerPort, p.Protocol))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", i.InstanceID, status, i.Image, orDash(strings.Join(gpus, ",")),
			orDash(strings.Join(ports, ",")), ago(i.CreatedAt))
	}
	tw.Flush()
	return exitOK
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ago is how long ago t was, for people.
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String() + " ago"
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// cmdInspect: one rental as the API answers it.
func cmdInspect(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) int {
	rest, ok := flags("inspect", args, stderr, 1, func(*flag.FlagSet) {})
	if !ok {
		return exitUsageErr
	}
	ctx, cancel := timed(ctx)
	defer cancel()
	var inst json.RawMessage
	if err := c.getJSON(ctx, "/instances/"+url.PathEscape(rest[0]), nil, &inst); err != nil {
		return fail(stderr, "inspect", err)
	}
	var v any
	_ = json.Unmarshal(inst, &v)
	if err := printJSON(stdout, v); err != nil {
		return fail(stderr, "inspect", err)
	}
	return exitOK
}

// cmdLogs: a rental's output, its last --tail lines, followed with -f
// until the rental ends or the command is interrupted.
func cmdLogs(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) int {
	var follow bool
	var tail int
	rest, ok := flags("logs", args, stderr, 1, func(fs *flag.FlagSet) {
		fs.BoolVar(&follow, "f", false, "follow the output")
		fs.BoolVar(&follow, "follow", false, "follow the output")
		fs.IntVar(&tail, "tail", -1, "only the last N lines (default: all the agent keeps)")
	})
	if !ok {
		return exitUsageErr
	}
	q := url.Values{}
	if tail >= 0 {
		q.Set("tail", strconv.Itoa(tail))
	}
	if follow {
		q.Set("follow", "true")
		if tail < 0 {
			// As docker logs -f: all the agent keeps, then what comes.
			q.Set("since", "0")
		}
	} else {
		var cancel context.CancelFunc
		ctx, cancel = timed(ctx)
		defer cancel()
	}
	resp, err := c.do(ctx, http.MethodGet, "/instances/"+url.PathEscape(rest[0])+"/logs", q, nil)
	if err != nil {
		return fail(stderr, "logs", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(stdout, resp.Body); err != nil && ctx.Err() == nil {
		return fail(stderr, "logs", err)
	}
	return exitOK
}

// cmdEvents: the /ws stream, one event a line, from --since on, until
// interrupted; --json prints each event as the API sends it.
func cmdEvents(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	var since string
	if _, ok := flags("events", args, stderr, 0, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print each event's JSON")
		fs.StringVar(&since, "since", "", "resume after this event sequence number")
	}); !ok {
		return exitUsageErr
	}
	q := url.Values{}
	if since != "" {
		if _, err := strconv.ParseUint(since, 10, 64); err != nil {
			fmt.Fprintf(stderr, "host-agent events: --since wants an event sequence number, got %q\n", since)
			return exitUsageErr
		}
		q.Set("since", since)
	}
	d := websocket.Dialer{TLSClientConfig: c.tls, HandshakeTimeout: clientTimeout}
	conn, resp, err := d.DialContext(ctx, c.wsURL(q), http.Header{"Authorization": {"Bearer " + c.token}})
	if err != nil {
		if resp != nil {
			return fail(stderr, "events", &apiError{Status: resp.StatusCode, Msg: resp.Status})
		}
		return fail(stderr, "events", fmt.Errorf("the agent at %s does not answer: %w", c.base, err))
	}
	defer conn.Close()
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	for {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			if ctx.Err() != nil {
				return exitOK
			}
			return fail(stderr, "events", fmt.Errorf("the stream ended: %w", err))
		}
		if asJSON {
			fmt.Fprintln(stdout, strings.TrimSpace(string(msg)))
			continue
		}
		var e events.Event
		if err := json.Unmarshal(msg, &e); err != nil {
			fmt.Fprintln(stdout, strings.TrimSpace(string(msg)))
			continue
		}
		fmt.Fprintln(stdout, eventLine(e))
	}
}

// eventLine is an event for people: sequence, time, type, instance and
// what the event says.
func eventLine(e events.Event) string {
	parts := []string{strconv.FormatUint(e.Seq, 10), e.Time.Local().Format("15:04:05.000"), e.Type}
	if e.InstanceID != "" {
		parts = append(parts, e.InstanceID)
	}
	if e.Image != "" {
		parts = append(parts, e.Image)
	}
	if e.GPU != "" {
		parts = append(parts, "gpu="+e.GPU)
	}
	if e.Status != "" {
		parts = append(parts, "status="+e.Status)
	}
	if e.ExitCode != nil {
		parts = append(parts, "exit_code="+strconv.Itoa(*e.ExitCode))
	}
	if e.OOMKilled {
		parts = append(parts, "oom_killed")
	}
	if e.Step != "" {
		parts = append(parts, "step="+e.Step)
	}
	if p := e.Progress; p != nil {
		parts = append(parts, fmt.Sprintf("%d/%d bytes", p.DoneBytes, p.TotalBytes))
	}
	for _, p := range e.Ports {
		parts = append(parts, fmt.Sprintf("port=%d->%d/%s", p.HostPort, p.ContainerPort, p.Protocol))
	}
	if e.Message != "" {
		parts = append(parts, strconv.Quote(e.Message))
	}
	if e.Digest != "" {
		parts = append(parts, "digest="+e.Digest, "size="+humanBytes(e.SizeBytes), fmt.Sprintf("seconds=%.1f", e.Seconds))
	}
	if e.Code != "" {
		parts = append(parts, "code="+e.Code)
	}
	if e.Error != "" {
		parts = append(parts, "error="+strconv.Quote(e.Error))
	}
	return strings.Join(parts, " ")
}

// cmdDrain: the host takes no new rentals; those running go on.
func cmdDrain(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) int {
	var reason string
	if _, ok := flags("drain", args, stderr, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&reason, "reason", "", "why, for operators and the central server")
	}); !ok {
		return exitUsageErr
	}
	ctx, cancel := timed(ctx)
	defer cancel()
	if err := c.sendJSON(ctx, http.MethodPost, "/drain", nil, map[string]string{"reason": reason}, nil); err != nil {
		return fail(stderr, "drain", err)
	}
	fmt.Fprintln(stdout, "drained: new rentals are refused; running rentals go on")
	return exitOK
}

// cmdUndrain: the host takes rentals again.
func cmdUndrain(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) int {
	if _, ok := flags("undrain", args, stderr, 0, func(*flag.FlagSet) {}); !ok {
		return exitUsageErr
	}
	ctx, cancel := timed(ctx)
	defer cancel()
	if err := c.sendJSON(ctx, http.MethodPost, "/undrain", nil, struct{}{}, nil); err != nil {
		return fail(stderr, "undrain", err)
	}
	fmt.Fprintln(stdout, "undrained: rentals are taken again")
	return exitOK
}

// cmdImages lists the images the runtime holds for rentals.
func cmdImages(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	if _, ok := flags("images", args, stderr, 0, func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print the API's JSON") }); !ok {
		return exitUsageErr
	}
	ctx, cancel := timed(ctx)
	defer cancel()
	var list server.ImageList
	if err := c.getJSON(ctx, "/images", nil, &list); err != nil {
		return fail(stderr, "images", err)
	}
	if asJSON {
		if err := printJSON(stdout, list); err != nil {
			return fail(stderr, "images", err)
		}
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tSIZE\tLAST USED\tPINNED UNTIL\tIN USE")
	for _, img := range list.Images {
		pinned := "-"
		if img.PinnedUntil != nil {
			pinned = img.PinnedUntil.Format(time.RFC3339)
		}
		digest := img.Digest
		if len(digest) > len("sha256:")+12 {
			digest = digest[:len("sha256:")+12]
		}
		inUse := "no"
		if img.InUse {
			inUse = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", img.Image, orDash(digest), humanBytes(img.SizeBytes), ago(img.LastUsed), pinned, inUse)
	}
	tw.Flush()
	return exitOK
}

// humanBytes is n in binary units, for people.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// cmdPull has the agent pull an image ahead of any start; the pull goes on
// in the agent after the command returns.
func cmdPull(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) int {
	var pinHours int
	rest, ok := flags("pull", args, stderr, 1, func(fs *flag.FlagSet) {
		fs.IntVar(&pinHours, "pin-hours", 0, "keep the image from image GC for this many hours")
	})
	if !ok {
		return exitUsageErr
	}
	ctx, cancel := timed(ctx)
	defer cancel()
	var resp server.ImagePullResponse
	req := server.ImagePullRequest{Image: rest[0], PinHours: pinHours}
	if err := c.sendJSON(ctx, http.MethodPost, "/images/pull", nil, req, &resp); err != nil {
		return fail(stderr, "pull", err)
	}
	switch resp.Status {
	case "present":
		fmt.Fprintf(stdout, "present: %s %s (%s)\n", resp.Image, resp.Digest, humanBytes(resp.SizeBytes))
	default:
		fmt.Fprintf(stdout, "pulling: %s (host-agent events shows image.pulled or image.failed)\n", resp.Image)
	}
	return exitOK
}
