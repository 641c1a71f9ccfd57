// Package testenv starts the real components that integration tests run
// against: a private containerd daemon, and a registry on 127.0.0.1 serving
// an image built from the payload program. It is imported by tests only.
//
// Integration tests are gated by Require: they skip under `go test -short`
// (the fast tier, which needs no root, daemon or network), and otherwise
// skip, with the reason, when not run as root or when the daemon's binaries
// are missing, unless HOST_AGENT_INTEGRATION=require is set (as CI does), in
// which case they fail instead. Shared daemons are started lazily, by the
// first test that needs them (see Fixture), so a package whose integration
// tests are all skipped starts none.
package testenv

import (
	"os"
	"os/exec"
	"testing"

	"github.com/containerd/log"
)

func init() {
	// The containerd client logs every registry miss at info level; tests
	// assert on those errors themselves.
	_ = log.SetLevel("warn")
}

// RequireEnv makes missing integration prerequisites fatal instead of a skip.
const RequireEnv = "HOST_AGENT_INTEGRATION"

// ShortReason is the reason an integration test gives for skipping under
// `go test -short`.
const ShortReason = "integration test: not in -short"

// Require is the gate of every integration test (one that needs root, a
// daemon, iptables, a network namespace or the network). It skips tb under
// `go test -short`; otherwise it skips (or, under
// HOST_AGENT_INTEGRATION=require, fails) tb unless it runs as root and
// every named binary is on PATH.
func Require(tb testing.TB, binaries ...string) {
	tb.Helper()
	if testing.Short() {
		tb.Skip(ShortReason)
	}
	if reason := Missing(binaries...); reason != "" {
		Unavailable(tb, reason)
	}
}

// Unavailable ends an integration test, already past Require, whose other
// prerequisite (a plugin, a daemon flavour) is missing for reason: a skip,
// or a failure under HOST_AGENT_INTEGRATION=require, where a skip would
// hide one.
func Unavailable(tb testing.TB, reason string) {
	tb.Helper()
	if os.Getenv(RequireEnv) == "require" {
		tb.Fatalf("integration prerequisites missing: %s", reason)
	}
	tb.Skipf("integration test skipped: %s (set %s=require to make this fatal)", reason, RequireEnv)
}

// Missing names the first missing prerequisite, or returns "".
func Missing(binaries ...string) string {
	if os.Geteuid() != 0 {
		return "not running as root"
	}
	for _, b := range binaries {
		if _, err := exec.LookPath(b); err != nil {
			return b + " not found on PATH"
		}
	}
	return ""
}
