package main

import (
	"fmt"
	"io"
)

// usage lists the commands the binary has. Nothing else is accepted: an
// unknown word must not start a second agent, which would rewrite the
// host's chains and sweep leftovers before failing to bind.
const usage = `Usage: host-agent [command]

Commands:
  serve                         run the agent (the default when no command is given)
  status [--json]               is the local agent ready; runtime, drain, rentals, free GPUs
  ls [--json]                   list the rentals
  inspect ID                    one rental, as the API answers it
  logs [-f] [--tail N] ID       a rental's output; -f follows it
  events [--since SEQ] [--json] the /ws event stream, one event a line, until ^C
  drain [--reason R]            take no new rentals; running ones go on
  undrain                       take rentals again
  images [--json]               the images the runtime holds for rentals
  pull [--pin-hours N] IMAGE    pull an image ahead of any start (it goes on in the agent)
  selftest [--json]             check the host as the agent would use it and exit
  version                       print the version and commit
  help                          print this help

The agent is configured by environment variables and a .env file in the
working directory, or the file ENV_FILE names (see the README). The client
commands call the local agent at HOST_AGENT_URL (default: LISTEN_ADDR's
port on 127.0.0.1, https when TLS_CERT_FILE is set) with the token of
AGENT_TOKEN or AGENT_TOKEN_FILE (default /var/lib/host-agent/token).

Exit status: 0 done; 1 the agent refused, is not ready (status) or does not
answer; 2 a usage error.
`

// command runs the command named by args (os.Args without the program) and
// returns the exit status: 2 for a command or argument it does not know,
// before anything on the host is touched.
func command(args []string, stdout, stderr io.Writer, serve func() int) int {
	name := "serve"
	if len(args) > 0 {
		name, args = args[0], args[1:]
	}
	switch name {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "serve":
		if len(args) > 0 {
			return usageError(stderr, fmt.Sprintf("serve takes no arguments, got %q", args[0]))
		}
		return serve()
	case "version", "-version", "--version":
		if len(args) > 0 {
			return usageError(stderr, fmt.Sprintf("version takes no arguments, got %q", args[0]))
		}
		fmt.Fprintln(stdout, versionLine())
		return 0
	case "selftest":
		return selftestMain(args, stdout, stderr)
	}
	if _, ok := clientCommands[name]; ok {
		return runClient(name, args, stdout, stderr)
	}
	return usageError(stderr, fmt.Sprintf("unknown command %q", name))
}

func usageError(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "host-agent: %s\n\n%s", msg, usage)
	return 2
}
