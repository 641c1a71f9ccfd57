package main

import (
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
)

func TestVolumeDirConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		env     map[string]string
		want    string
		wantVar string
	}{
		{map[string]string{}, "/var/lib/host-agent/volumes", ""},
		{map[string]string{"STATE_DIR": "/srv/agent"}, "/srv/agent/volumes", ""},
		{map[string]string{"VOLUME_DIR": "/data/volumes/"}, "/data/volumes", ""},
		{map[string]string{"VOLUME_DIR": "volumes"}, "", "VOLUME_DIR"},
	} {
		env := map[string]string{"AGENT_ID": "host-1", "AGENT_TOKEN": goodToken}
		for k, v := range tc.env {
			env[k] = v
		}
		c, err := loadConfig(envOf(env), filepath.Join(dir, "no.env"))
		var ce *configError
		switch {
		case tc.wantVar != "":
			if !errors.As(err, &ce) || ce.Var != tc.wantVar {
				t.Errorf("%v: %v, want an error naming %s", tc.env, err, tc.wantVar)
			}
		case err != nil || c.VolumeDir != tc.want:
			t.Errorf("%v: VOLUME_DIR %q (%v), want %q", tc.env, c.VolumeDir, err, tc.want)
		}
	}
}

// logsOf polls an instance's output until it contains want.
func logsOf(t *testing.T, a *agentProc, id, want string) string {
	t.Helper()
	var got string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequest("GET", a.base+"/instances/"+id+"/logs", nil)
		req.Header.Set("Authorization", "Bearer "+e2eToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got = string(b); strings.Contains(got, want) {
			return got
		}
	}
	t.Fatalf("logs of %s never showed %q:\n%s", id, want, got)
	return ""
}

// TestAgentVolumesEndToEnd drives the built agent as the central server
// would: a volume is created, attached to a rental that writes to it, kept
// attached across an agent crash (rebuilt from VOLUME_DIR and the
// container's labels), read by the owner's next rental, then deleted.
func TestAgentVolumesEndToEnd(t *testing.T) {
	w := newWorld(t)
	testenv.Require(t, "mkfs.ext4", "mount", "umount")
	volDir := t.TempDir()
	t.Cleanup(func() {
		entries, _ := os.ReadDir(volDir)
		for _, e := range entries {
			_ = exec.Command("umount", filepath.Join(volDir, e.Name(), "data")).Run()
		}
	})
	env := append(slices.Clone(w.env), "VOLUME_DIR="+volDir)
	agent := startAgent(t, w.bin, env, w.agentLog)

	code, body := agent.call("POST", "/volumes", map[string]any{"name": "ds", "owner": "tenant-7", "size_gb": 1})
	if code != http.StatusCreated || body["name"] != "ds" || body["attached_to"] != nil {
		t.Fatalf("create: %d %v", code, body)
	}
	attach := []map[string]any{{"name": "ds", "owner": "tenant-7", "mount_path": "/data"}}
	if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "vol-thief", "image": w.image,
		"volumes": []map[string]any{{"name": "ds", "owner": "tenant-8", "mount_path": "/data"}}}); code != http.StatusForbidden || body["field"] != "volumes[0].owner" {
		t.Fatalf("another owner's start: %d %v", code, body)
	}
	if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "vol-1", "image": w.image,
		"command": []string{"write", "/data/hello", "echo", "END", "sleep", "inf"}, "volumes": attach}); code != http.StatusOK {
		t.Fatalf("start: %d %v", code, body)
	}
	if logs := logsOf(t, agent, "vol-1", "END"); !strings.Contains(logs, "write /data/hello: ok") {
		t.Fatalf("the rental could not write its volume:\n%s", logs)
	}

	// The agent crashes and comes back.
	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	<-agent.done
	agent = startAgent(t, w.bin, env, w.agentLog)
	code, list := agent.call("GET", "/volumes", nil)
	vols, _ := list["volumes"].([]any)
	if code != http.StatusOK || len(vols) != 1 || vols[0].(map[string]any)["attached_to"] != "vol-1" || vols[0].(map[string]any)["owner"] != "tenant-7" {
		t.Fatalf("volumes after an agent restart: %d %v", code, list)
	}
	if code, body := agent.call("DELETE", "/volumes/ds", nil); code != http.StatusConflict {
		t.Fatalf("delete while attached: %d %v", code, body)
	}
	if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "vol-1"}); code != http.StatusOK {
		t.Fatalf("terminate: %d %v", code, body)
	}
	if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "vol-2", "image": w.image,
		"command": []string{"cat", "/data/hello", "echo", "END", "sleep", "inf"}, "volumes": attach}); code != http.StatusOK {
		t.Fatalf("start of the next rental: %d %v", code, body)
	}
	if logs := logsOf(t, agent, "vol-2", "END"); !strings.Contains(logs, "written by the tenant") {
		t.Fatalf("the next rental does not see the data:\n%s", logs)
	}
	if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "vol-2"}); code != http.StatusOK {
		t.Fatalf("terminate: %d %v", code, body)
	}
	if code, body := agent.call("DELETE", "/volumes/ds", nil); code != http.StatusOK {
		t.Fatalf("delete: %d %v", code, body)
	}
	if code, list := agent.call("GET", "/volumes", nil); code != http.StatusOK || len(list["volumes"].([]any)) != 0 {
		t.Fatalf("volumes after delete: %d %v", code, list)
	}
	if _, err := os.Stat(filepath.Join(volDir, "ds")); !os.IsNotExist(err) {
		t.Fatalf("the deleted volume's files: %v", err)
	}
}
