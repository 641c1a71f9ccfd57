package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/host-agent/host-agent/runtime/events"
)

// schedulerCall is one API call as the central scheduler makes it: a short
// timeout, the answer's status (0: no answer in time) and error text.
func schedulerCall(a *agentProc, path string, body any) (int, string) {
	b, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.base+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

// containerd killed and restarted while the scheduler keeps starting and
// terminating rentals: running rentals survive with their processes, every
// exit is reported once, the API answers 503 (never a 5xx of another kind,
// never a hang) while containerd is away and works again once it is back,
// and after terminating everything it asked for, nothing is left.
func TestContainerdKilledUnderStartsAndTerminates(t *testing.T) {
	w := newWorld(t)
	// Rentals pile up while containerd is away (their terminates answer
	// 503): each gets a small disk limit, as on a host of many small
	// rentals, so that the pile is never refused for disk.
	agent := startAgent(t, w.bin, append(w.env, "RENTAL_DISK_GB=1"), w.agentLog)
	evs := agent.eventStream("")
	var evMu sync.Mutex
	exits := map[string]int{}
	go func() {
		for e := range evs {
			if e.Type == events.TypeInstanceExited {
				evMu.Lock()
				exits[e.InstanceID]++
				evMu.Unlock()
			}
		}
	}()
	start := func(id string, command ...string) (int, string) {
		return schedulerCall(agent, "/start_instance", map[string]any{"instance_id": id, "image": w.image, "command": command})
	}
	terminate := func(id string) (int, string) {
		return schedulerCall(agent, "/terminate_instance", map[string]any{"instance_id": id, "timeout_seconds": 0})
	}

	pids := map[string]any{}
	for _, id := range []string{"keep-1", "keep-2"} {
		code, body := start(id, "sleep", "inf")
		if code != http.StatusOK {
			t.Fatalf("start %s: %d %s", id, code, body)
		}
		_, inst := agent.call("GET", "/instances/"+id, nil)
		pids[id] = inst["pid"]
	}
	// "quit" exits while containerd is down.
	if code, body := start("quit", "sleep", "3", "exit", "7"); code != http.StatusOK {
		t.Fatalf("start quit: %d %s", code, body)
	}

	// The scheduler's stream: start a rental, terminate the one before.
	var mu sync.Mutex
	answers := map[int]int{}
	var unexpected []string
	var attempted []string
	stop := make(chan struct{})
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("stream-%d", i)
			mu.Lock()
			attempted = append(attempted, id)
			mu.Unlock()
			calls := [][2]any{{"start", id}}
			if i > 0 {
				calls = append(calls, [2]any{"terminate", fmt.Sprintf("stream-%d", i-1)})
			}
			for _, c := range calls {
				var code int
				var body string
				if c[0] == "start" {
					code, body = start(c[1].(string), "sleep", "inf")
				} else {
					code, body = terminate(c[1].(string))
				}
				mu.Lock()
				answers[code]++
				if code != http.StatusOK && code != http.StatusServiceUnavailable && !(c[0] == "terminate" && code == http.StatusNotFound) {
					unexpected = append(unexpected, fmt.Sprintf("%s %s: %d %s", c[0], c[1], code, body))
				}
				mu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	time.Sleep(2 * time.Second)
	w.ctd.Kill()
	down := time.Now()
	// While containerd is away, starts are answered 503.
	for {
		code, body := start("while-down", "sleep", "inf")
		if code == http.StatusServiceUnavailable {
			break
		}
		if time.Since(down) > 15*time.Second {
			t.Fatalf("start with containerd killed: %d %s, want 503", code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if resp, err := http.Get(agent.base + "/readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz with containerd killed: %v %v", resp, err)
	}
	time.Sleep(time.Until(down.Add(4 * time.Second)))
	if err := w.ctd.Start(); err != nil {
		t.Fatal(err)
	}
	// It works again.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		code, body := start("after", "sleep", "inf")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("start after containerd came back: %d %s", code, body)
		}
	}
	time.Sleep(time.Second)
	close(stop)
	<-streamDone
	mu.Lock()
	t.Logf("answers during the stream: %v", answers)
	if len(unexpected) > 0 {
		t.Errorf("answers other than 200, 503 (and 404 to a terminate): %v", unexpected)
	}
	if answers[http.StatusServiceUnavailable] == 0 {
		t.Error("no call of the stream met the outage")
	}
	mu.Unlock()

	for id, pid := range pids {
		code, inst := agent.call("GET", "/instances/"+id, nil)
		if code != http.StatusOK || inst["status"] != "running" || inst["pid"] != pid {
			t.Errorf("%s after containerd's restart: %d %v, want running with pid %v", id, code, inst, pid)
		}
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, inst := agent.call("GET", "/instances/quit", nil)
		if inst["status"] == "exited" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("quit after containerd's restart: %v, want exited", inst)
		}
	}

	// The scheduler terminates everything it asked for.
	all := append([]string{"keep-1", "keep-2", "quit", "while-down", "after"}, attempted...)
	for _, id := range all {
		if code, body := terminate(id); code != http.StatusOK && code != http.StatusNotFound {
			t.Errorf("terminate %s: %d %s", id, code, body)
		}
	}
	time.Sleep(time.Second)
	evMu.Lock()
	if exits["quit"] != 1 {
		t.Errorf("quit's exit reported %d times, want once", exits["quit"])
	}
	for id, n := range exits {
		if n > 1 {
			t.Errorf("exit of %s reported %d times", id, n)
		}
	}
	evMu.Unlock()
	if code, body := agent.call("GET", "/instances", nil); code != http.StatusOK || len(body["instances"].([]any)) != 0 {
		t.Errorf("instances after terminating all: %d %v", code, body)
	}
	cl, err := containerd.New(w.ctd.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := namespaces.WithNamespace(context.Background(), "rentals")
	if cs, err := cl.Containers(ctx); err != nil || len(cs) != 0 {
		t.Errorf("containers left: %d %v", len(cs), err)
	}
	for _, id := range all {
		assertNothingLeft(t, ctx, cl, id, stateDirOf(w))
	}
}

// stateDirOf is the agent's STATE_DIR in w.
func stateDirOf(w *world) string {
	for _, e := range w.env {
		if v, ok := strings.CutPrefix(e, "STATE_DIR="); ok {
			return v
		}
	}
	return ""
}
