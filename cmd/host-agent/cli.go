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
  serve       run the agent (the default when no command is given)
  version     print the version and commit
  selftest    check the host as the agent would use it and exit (--json for machines)
  help        print this help

The agent is configured by environment variables and a .env file in the
working directory (see the README).
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
	return usageError(stderr, fmt.Sprintf("unknown command %q", name))
}

func usageError(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "host-agent: %s\n\n%s", msg, usage)
	return 2
}
