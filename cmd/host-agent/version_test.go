package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVersionSubcommand builds the agent as the Dockerfile does, with the
// version and commit baked in, and reads them back from `host-agent version`.
func TestVersionSubcommand(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "host-agent")
	out, err := exec.Command("go", "build", "-ldflags", "-X main.version=1.2.3 -X main.commit=abc123", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(bin, arg).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", arg, err, out)
		}
		if got, want := strings.TrimSpace(string(out)), "host-agent 1.2.3 (commit abc123)"; got != want {
			t.Errorf("host-agent %s = %q, want %q", arg, got, want)
		}
	}
}
