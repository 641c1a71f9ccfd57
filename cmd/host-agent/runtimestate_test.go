package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRememberedRuntime reads STATE_DIR/runtime back as written, takes a
// missing file for no choice yet, and refuses a file naming anything else,
// naming the file.
func TestRememberedRuntime(t *testing.T) {
	t.Parallel()
	cfg := config{StateDir: filepath.Join(t.TempDir(), "state")}
	if got, err := rememberedRuntime(cfg); got != "" || err != nil {
		t.Fatalf("no file: %q %v", got, err)
	}
	for _, name := range []string{runtimeDocker, runtimeContainerd} {
		if err := rememberRuntime(cfg, name); err != nil {
			t.Fatal(err)
		}
		if got, err := rememberedRuntime(cfg); got != name || err != nil {
			t.Fatalf("after remembering %s: %q %v", name, got, err)
		}
	}
	if entries, _ := os.ReadDir(cfg.StateDir); len(entries) != 1 {
		t.Errorf("STATE_DIR holds %v, want only the runtime file", entries)
	}
	if err := os.WriteFile(runtimeFile(cfg), []byte("podman\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := rememberedRuntime(cfg); err == nil || !strings.Contains(err.Error(), runtimeFile(cfg)) || !strings.Contains(err.Error(), "podman") {
		t.Fatalf("a file naming podman: %v", err)
	}
}
