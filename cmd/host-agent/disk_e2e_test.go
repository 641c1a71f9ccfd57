package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/runtime/events"
)

// The built agent on containerd, with its disk measured on a 96 MiB file
// system and DISK_WATCH_INTERVAL=500ms: a CPU rental naming no limit gets
// an eighth of the disk (12 MiB), recorded; the watcher stops one writing
// 32 MiB, and /ws, GET and a restarted agent say reason disk_limit; one
// writing 1 MiB runs on.
func TestAgentStopsRentalAtItsDiskLimit(t *testing.T) {
	w := newWorld(t)
	root := filepath.Join(t.TempDir(), "root")
	if err := unix.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=96m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	env := append(append([]string(nil), w.env...), "CONTAINERD_ROOT="+root, "DISK_RESERVE_GB=0", "DISK_WATCH_INTERVAL=500ms")
	agent := startAgent(t, w.bin, env, w.agentLog)
	evs := agent.eventStream("")
	for _, s := range []struct{ id, mib string }{{"disk-hog", "32"}, {"disk-fine", "1"}} {
		code, body := agent.call("POST", "/start_instance", map[string]any{
			"instance_id": s.id, "image": w.image, "command": []string{"fill", "/f", s.mib, "sleep", "inf"}})
		if code != http.StatusOK {
			t.Fatalf("start %s: %d %v", s.id, code, body)
		}
	}
	// What disk-hog wrote by then counts back, up to its limit: here
	// it lies on another file system, so that the share may exceed an
	// eighth of 96 MiB by up to 12 MiB / 8.
	_, fine := agent.call("GET", "/instances/disk-fine", nil)
	if lim, ok := fine["disk_limit_bytes"].(float64); !ok || lim < 12<<20 || lim > 12<<20+12<<20/8 {
		t.Fatalf("default disk limit %v, want an eighth of 96 MiB", fine["disk_limit_bytes"])
	}
	if e := await(t, evs, "disk-hog", events.TypeInstanceExited); e.Reason != "disk_limit" {
		t.Fatalf("exit event %+v, want reason disk_limit", e)
	}
	if code, body := agent.call("GET", "/instances/disk-hog", nil); code != http.StatusOK || body["status"] != "exited" || body["reason"] != "disk_limit" {
		t.Fatalf("GET disk-hog: %d %v", code, body)
	}
	_ = agent.cmd.Process.Signal(syscall.SIGTERM)
	agent.waitDead()
	agent = startAgent(t, w.bin, env, w.agentLog)
	if code, body := agent.call("GET", "/instances/disk-hog", nil); code != http.StatusOK || body["reason"] != "disk_limit" {
		t.Fatalf("GET disk-hog after an agent restart: %d %v", code, body)
	}
	if code, body := agent.call("GET", "/instances/disk-fine", nil); code != http.StatusOK || body["status"] != "running" || fmt.Sprint(body["reason"]) != "<nil>" {
		t.Fatalf("GET disk-fine: %d %v, want running", code, body)
	}
	for _, id := range []string{"disk-hog", "disk-fine"} {
		if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": id}); code != http.StatusOK {
			t.Fatalf("terminate %s: %d %v", id, code, body)
		}
	}
}
