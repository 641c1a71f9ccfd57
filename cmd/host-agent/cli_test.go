package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
)

// TestCommandLine runs the built agent with help and with words it does not
// know, configured so that a daemon would start: help exits 0 and an unknown
// word 2, both printing the usage, and neither touches the host (its
// iptables rules and links are as before, STATE_DIR stays empty, nothing
// listens on LISTEN_ADDR).
func TestCommandLine(t *testing.T) {
	testenv.Require(t, "iptables-save", "ip6tables-save")
	bin := buildAgent(t)
	state := t.TempDir()
	// Names and a subnet of the test's own, removed at the end, in case a
	// daemon does start.
	tn := newTestNetwork(t, state)
	addr := freeAddr(t)
	env := append([]string{"PATH=" + os.Getenv("PATH"), "AGENT_ID=cli-host", "AGENT_TOKEN=" + e2eToken,
		"LISTEN_ADDR=" + addr, "STATE_DIR=" + state,
		"CONTAINERD_ADDRESS=" + state + "/no-containerd.sock", "DOCKER_HOST=unix://" + state + "/no-docker.sock"}, tn.env()...)

	for _, tc := range []struct {
		args     []string
		code     int
		inStdout string
		inStderr string
		// client: a client command, which prints its own error, not the
		// command list.
		client bool
	}{
		{args: []string{"--help"}, code: 0, inStdout: "Usage: host-agent"},
		{args: []string{"-h"}, code: 0, inStdout: "Usage: host-agent"},
		{args: []string{"help"}, code: 0, inStdout: "Usage: host-agent"},
		{args: []string{"bogus"}, code: 2, inStderr: `unknown command "bogus"`},
		{args: []string{"stauts"}, code: 2, inStderr: `unknown command "stauts"`},
		// A client command with no agent to answer it touches nothing either.
		{args: []string{"status"}, code: 1, inStderr: `does not answer`, client: true},
		{args: []string{"ls", "--bogus"}, code: 2, inStderr: `flag provided but not defined: -bogus`, client: true},
		{args: []string{"--port=8080"}, code: 2, inStderr: `unknown command "--port=8080"`},
		{args: []string{"serve", "now"}, code: 2, inStderr: `serve takes no arguments, got "now"`},
		{args: []string{"version", "x"}, code: 2, inStderr: `version takes no arguments`},
		{args: []string{"selftest", "x"}, code: 2, inStderr: `selftest takes no arguments, got "x"`},
		{args: []string{"selftest", "--bogus"}, code: 2, inStderr: `flag provided but not defined: -bogus`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			rulesBefore, linksBefore := iptablesRules(t), links(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tc.args...)
			cmd.Env, cmd.Dir = env, t.TempDir()
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			code := 0
			if errors.As(err, &exit) {
				code = exit.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if ctx.Err() != nil {
				t.Fatalf("host-agent %v did not exit: a daemon started\n%s%s", tc.args, stdout.String(), stderr.String())
			}
			if code != tc.code {
				t.Errorf("host-agent %v exited %d, want %d\n%s%s", tc.args, code, tc.code, stdout.String(), stderr.String())
			}
			if tc.inStdout != "" && !strings.Contains(stdout.String(), tc.inStdout) {
				t.Errorf("host-agent %v: stdout %q lacks %q", tc.args, stdout.String(), tc.inStdout)
			}
			if tc.inStderr != "" && (!strings.Contains(stderr.String(), tc.inStderr) || (!tc.client && !strings.Contains(stderr.String(), "Usage"))) {
				t.Errorf("host-agent %v: stderr %q lacks %q and the usage", tc.args, stderr.String(), tc.inStderr)
			}
			for _, line := range []string{"serve", "version", "selftest", "help"} {
				if tc.args[0] != "selftest" && !tc.client && !strings.Contains(stdout.String()+stderr.String(), "\n  "+line+" ") {
					t.Errorf("host-agent %v: the usage does not list %s", tc.args, line)
				}
			}
			if after := iptablesRules(t); after != rulesBefore {
				t.Errorf("host-agent %v changed the iptables rules:\nbefore:\n%s\nafter:\n%s", tc.args, rulesBefore, after)
			}
			if after := links(t); after != linksBefore {
				t.Errorf("host-agent %v changed the host's links:\nbefore: %s\nafter:  %s", tc.args, linksBefore, after)
			}
			if entries, _ := os.ReadDir(state); len(entries) > 0 {
				t.Errorf("host-agent %v wrote to STATE_DIR: %v", tc.args, entries)
			}
			if ln, err := net.Listen("tcp", addr); err != nil {
				t.Errorf("host-agent %v left something listening on %s: %v", tc.args, addr, err)
			} else {
				ln.Close()
			}
		})
	}
}

// countersRE matches the packet and byte counters iptables-save prints on
// chain lines, which traffic changes.
var countersRE = regexp.MustCompile(`\[\d+:\d+\]`)

// iptablesRules is iptables-save's output without its dated comments and
// counters.
func iptablesRules(t *testing.T) string {
	t.Helper()
	var rules []string
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(tool).Output()
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(l, "#") {
				rules = append(rules, countersRE.ReplaceAllString(l, ""))
			}
		}
	}
	return strings.Join(rules, "\n")
}

// links names the host's network links.
func links(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(ifs))
	for i, l := range ifs {
		names[i] = l.Name
	}
	return strings.Join(names, " ")
}
