// Package testenv starts the real components that integration tests run
// against: a private containerd daemon, and a registry on 127.0.0.1 serving
// an image built from the payload program. It is imported by tests only.
//
// Integration tests skip, with the reason, when not run as root or when the
// daemon's binaries are missing, unless HOST_AGENT_INTEGRATION=require is
// set (as CI does), in which case they fail instead.
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

// Require skips (or, under HOST_AGENT_INTEGRATION=require, fails) tb unless
// it runs as root and every named binary is on PATH.
func Require(tb testing.TB, binaries ...string) {
	tb.Helper()
	if reason := Missing(binaries...); reason != "" {
		if os.Getenv(RequireEnv) == "require" {
			tb.Fatalf("integration prerequisites missing: %s", reason)
		}
		tb.Skipf("integration test skipped: %s (set %s=require to make this fatal)", reason, RequireEnv)
	}
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
