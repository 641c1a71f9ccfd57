package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	ctrdruntime "github.com/host-agent/host-agent/runtime/containerd"
)

// The fault matrix: the agent is killed with SIGKILL at each step of a
// start and of a terminate (HOST_AGENT_FAULT makes it kill itself there).
// After a restart the central server does what it does for an answer it
// never got: it sends the same start again, then terminates. Both succeed,
// and afterwards nothing of the instance is left in containerd (container,
// task, snapshot, start lease) or on disk (its log). HOST_AGENT_FAULT_LONG
// repeats each step three times.
func TestAgentKilledAtEachStepLeavesNothingBehind(t *testing.T) {
	w := newWorld(t)
	cl, err := containerd.New(w.ctd.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := namespaces.WithNamespace(context.Background(), "rentals")
	stateDir := stateDirOf(w)
	rounds := 1
	if os.Getenv("HOST_AGENT_FAULT_LONG") != "" {
		rounds = 3
	}
	for round := range rounds {
		for _, step := range ctrdruntime.FaultSteps {
			id := "fault-" + strings.ReplaceAll(step, "-", "") + "-" + string(rune('a'+round))
			t.Run(id, func(t *testing.T) {
				start := map[string]any{"instance_id": id, "image": w.image, "command": []string{"sleep", "inf"}}
				faulty := append(append([]string(nil), w.env...), "HOST_AGENT_FAULT="+step)
				if step == ctrdruntime.FaultAfterTaskDelete {
					agent := startAgent(t, w.bin, w.env, w.agentLog)
					if code, body := agent.call("POST", "/start_instance", start); code != http.StatusOK {
						t.Fatalf("start: %d %v", code, body)
					}
					stopAgent(t, agent)
					agent = startAgent(t, w.bin, faulty, w.agentLog)
					postUntilKilled(t, agent, "/terminate_instance", map[string]any{"instance_id": id})
				} else {
					agent := startAgent(t, w.bin, faulty, w.agentLog)
					postUntilKilled(t, agent, "/start_instance", start)
				}

				agent := startAgent(t, w.bin, w.env, w.agentLog)
				if step != ctrdruntime.FaultAfterTaskDelete {
					if code, body := agent.call("POST", "/start_instance", start); code != http.StatusOK || body["status"] != "running" {
						t.Fatalf("start sent again after the crash: %d %v", code, body)
					}
				}
				if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": id, "timeout_seconds": 0}); code != http.StatusOK && code != http.StatusNotFound {
					t.Fatalf("terminate after the crash: %d %v", code, body)
				}
				if code, _ := agent.call("GET", "/instances/"+id, nil); code != http.StatusNotFound {
					t.Fatalf("GET after terminate: %d", code)
				}
				assertNothingLeft(t, ctx, cl, id, stateDir)
				stopAgent(t, agent)
			})
		}
	}
}

// postUntilKilled sends a request that makes the agent kill itself: no
// answer comes, and the process dies of SIGKILL.
func postUntilKilled(t *testing.T, a *agentProc, path string, body any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, a.base+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("POST %s answered %d; the agent should have died", path, resp.StatusCode)
	}
	select {
	case err := <-a.done:
		var exit interface{ Sys() any }
		if !errors.As(err, &exit) {
			t.Fatalf("agent exit: %v", err)
		}
		if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("agent exit: %v, want killed by SIGKILL", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("agent did not die")
	}
}

func stopAgent(t *testing.T, a *agentProc) {
	t.Helper()
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not stop on SIGTERM")
	}
}

// assertNothingLeft checks containerd and the state directory for anything
// of instance id.
func assertNothingLeft(t *testing.T, ctx context.Context, cl *containerd.Client, id, stateDir string) {
	t.Helper()
	if _, err := cl.LoadContainer(ctx, id); !errdefs.IsNotFound(err) {
		t.Errorf("container %s: %v, want not found", id, err)
	}
	tasks, err := cl.TaskService().List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks.Tasks {
		if tk.ID == id {
			t.Errorf("task %s left", id)
		}
	}
	if _, err := cl.SnapshotService("").Stat(ctx, id); !errdefs.IsNotFound(err) {
		t.Errorf("snapshot %s: %v, want not found", id, err)
	}
	ls, err := cl.LeasesService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if strings.HasPrefix(l.ID, "host-agent-start-") {
			t.Errorf("start lease %s left (instance %s)", l.ID, l.Labels["host-agent.io/instance-id"])
		}
	}
	if _, err := os.Stat(filepath.Join(stateDir, "logs", "rentals", id+".log")); !os.IsNotExist(err) {
		t.Errorf("log of %s: %v, want gone", id, err)
	}
}
