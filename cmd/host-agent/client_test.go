package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/host-agent/host-agent/server"
)

// cli runs the built binary's client command against the agent at base,
// as a provider would on the host, and returns its exit code and output.
func cli(t *testing.T, bin, base string, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOST_AGENT_URL=" + base}, env...)
	cmd.Dir = t.TempDir()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// TestCLIAgainstARunningAgent drives the client commands against the
// built agent on a real containerd: their output for people, their JSON
// for scripts, and their exit codes.
func TestCLIAgainstARunningAgent(t *testing.T) {
	w := newWorld(t)
	agent := startAgent(t, w.bin, w.env, w.agentLog)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(e2eToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"AGENT_TOKEN_FILE=" + tokenFile}
	run := func(args ...string) (int, string, string) {
		t.Helper()
		return cli(t, w.bin, agent.base, env, args...)
	}

	if code, body := agent.call("POST", "/start_instance", map[string]any{
		"instance_id": "cli-1", "image": w.image, "command": []string{"echo", "first", "echo", "second", "sleep", "inf"},
	}); code != http.StatusOK {
		t.Fatalf("start: %d %v", code, body)
	}

	code, out, errOut := run("status")
	if code != 0 || !strings.Contains(out, "ready") || !strings.Contains(out, "e2e-host") || !strings.Contains(out, "1 (1 running)") ||
		!strings.Contains(out, "containerd") {
		t.Errorf("status: %d\n%s%s", code, out, errOut)
	}
	code, out, _ = run("status", "--json")
	var st statusReport
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || !st.Ready || st.Running != 1 || st.Host == nil || st.Host.AgentID != "e2e-host" {
		t.Errorf("status --json: %d %v %+v\n%s", code, err, st, out)
	}

	code, out, _ = run("ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "INSTANCE") || !strings.HasPrefix(lines[1], "cli-1 ") ||
		!strings.Contains(lines[1], "running") || !strings.Contains(lines[1], w.image) {
		t.Errorf("ls: %d\n%s", code, out)
	}
	code, out, _ = run("ls", "--json")
	var list server.ListInstancesResponse
	if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil || len(list.Instances) != 1 || list.Instances[0].InstanceID != "cli-1" {
		t.Errorf("ls --json: %d %v\n%s", code, err, out)
	}

	code, out, _ = run("inspect", "cli-1")
	var inst server.InstanceResponse
	if err := json.Unmarshal([]byte(out), &inst); code != 0 || err != nil || inst.InstanceID != "cli-1" || inst.Status != "running" {
		t.Errorf("inspect: %d %v\n%s", code, err, out)
	}
	if code, _, errOut := run("inspect", "nobody"); code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("inspect of an unknown instance: %d %q, want 1 and the agent's 404", code, errOut)
	}

	var logs string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if code, logs, _ = run("logs", "--tail", "1", "cli-1"); code == 0 && logs == "second\n" {
			break
		}
	}
	if logs != "second\n" {
		t.Errorf("logs --tail 1: %d %q, want the last line", code, logs)
	}
	follow := exec.Command(w.bin, "logs", "cli-1", "-f")
	follow.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOST_AGENT_URL=" + agent.base}, env...)
	if got := firstLines(t, follow, 2); got != "first\nsecond\n" {
		t.Errorf("logs -f: %q, want the whole output so far", got)
	}

	// The stream from now on: a start shows as it happens, for people and
	// as JSON, and --since resumes after a sequence number.
	events := exec.Command(w.bin, "events")
	events.Env = follow.Env
	jsonEvents := exec.Command(w.bin, "events", "--json")
	jsonEvents.Env = follow.Env
	wsBefore := wsRequests(t, w.agentLog)
	people, machines := untilLine(t, events, "instance.running cli-2"), untilLine(t, jsonEvents, `"instance_id":"cli-2"`)
	for deadline := time.Now().Add(20 * time.Second); wsRequests(t, w.agentLog) < wsBefore+2 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "cli-2", "image": w.image}); code != http.StatusOK {
		t.Fatalf("start cli-2: %d %v", code, body)
	}
	line := <-people
	seq, _, _ := strings.Cut(line, " ")
	if !strings.Contains(line, "instance.running cli-2 status=running") {
		t.Errorf("events: %q, want cli-2's running event", line)
	}
	var e struct {
		Seq        uint64 `json:"seq"`
		Type       string `json:"type"`
		InstanceID string `json:"instance_id"`
	}
	if err := json.Unmarshal([]byte(<-machines), &e); err != nil || e.InstanceID != "cli-2" || e.Type == "" {
		t.Errorf("events --json: %+v %v", e, err)
	}
	resumed := exec.Command(w.bin, "events", "--since", seq)
	resumed.Env = follow.Env
	if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": "cli-2"}); code != http.StatusOK {
		t.Fatalf("terminate cli-2: %d %v", code, body)
	}
	if got := <-untilLine(t, resumed, "instance.terminated cli-2"); got == "" {
		t.Errorf("events --since %s: no terminated event of cli-2", seq)
	}

	if code, out, errOut := run("drain", "--reason", "maintenance"); code != 0 || !strings.Contains(out, "drained") {
		t.Errorf("drain: %d %s%s", code, out, errOut)
	}
	if code, out, _ := run("status"); !strings.Contains(out, "yes: maintenance") {
		t.Errorf("status while drained: %d\n%s", code, out)
	}
	if code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "cli-2", "image": w.image}); code == http.StatusOK {
		t.Errorf("a start while drained: %d %v", code, body)
	}
	if code, out, _ := run("undrain"); code != 0 || !strings.Contains(out, "undrained") {
		t.Errorf("undrain: %d %s", code, out)
	}

	// Usage errors exit 2; an agent that does not answer, 1.
	for _, args := range [][]string{{"ls", "--bogus"}, {"inspect"}, {"logs", "a", "b"}, {"events", "--since", "x"}} {
		if code, _, _ := run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	if code, _, errOut := cli(t, w.bin, "http://"+freeAddr(t), env, "ls"); code != 1 || !strings.Contains(errOut, "does not answer") {
		t.Errorf("ls with no agent: %d %q", code, errOut)
	}
	if code, _, errOut := cli(t, w.bin, agent.base, []string{"AGENT_TOKEN=wrong-token-0123456789"}, "ls"); code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("ls with a wrong token: %d %q", code, errOut)
	}
}

// untilLine starts cmd and sends the first line of its output holding
// want ("" if none comes in time), then interrupts it as a person would
// with ^C and checks it exits 0.
func untilLine(t *testing.T, cmd *exec.Cmd, want string) <-chan string {
	t.Helper()
	out := make(chan string, 1)
	lines := readLines(t, cmd, func(_ int, line string) bool { return strings.Contains(line, want) })
	go func() {
		got := <-lines
		if i := strings.LastIndex(strings.TrimSuffix(got, "\n"), "\n"); i >= 0 {
			got = got[i+1:]
		}
		out <- strings.TrimSuffix(got, "\n")
	}()
	return out
}

// firstLines starts cmd, returns its first n lines of output, then
// interrupts it as a person would with ^C and checks it exits 0.
func firstLines(t *testing.T, cmd *exec.Cmd, n int) string {
	t.Helper()
	return <-readLines(t, cmd, func(i int, _ string) bool { return i == n })
}

// readLines starts cmd and sends its output up to the line for which stop
// (given the line's number from 1, and the line) is true, or "" when none
// comes in 30 seconds; then it interrupts cmd with SIGINT, as ^C does,
// and checks it exits 0.
func readLines(t *testing.T, cmd *exec.Cmd, stop func(int, string) bool) <-chan string {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var got strings.Builder
		for i := 1; sc.Scan(); i++ {
			got.WriteString(sc.Text() + "\n")
			if stop(i, sc.Text()) {
				found <- got.String()
				break
			}
		}
		close(found)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	out := make(chan string, 1)
	go func() {
		var got string
		select {
		case got = <-found:
		case <-time.After(30 * time.Second):
		}
		_ = cmd.Process.Signal(syscall.SIGINT)
		if err := cmd.Wait(); err != nil {
			t.Errorf("%v after ^C: %v (stderr %q)", cmd.Args, err, stderr.String())
		}
		out <- got
	}()
	return out
}

// wsRequests counts the /ws streams the agent's log shows opened.
func wsRequests(t *testing.T, log string) int {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), `"path":"/ws"`)
}

// host-agent pull has the agent pull an image ahead of any start, and
// host-agent images lists it, pinned when asked.
func TestCLIImagesAndPull(t *testing.T) {
	w := newWorld(t)
	agent := startAgent(t, w.bin, w.env, w.agentLog)
	env := []string{"AGENT_TOKEN=" + e2eToken}
	run := func(args ...string) (int, string, string) {
		t.Helper()
		return cli(t, w.bin, agent.base, env, args...)
	}
	if code, out, errOut := run("images"); code != 0 || strings.Contains(out, w.image) {
		t.Fatalf("images before any pull: %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := run("pull", w.image); code != 0 || !strings.Contains(out, "pulling: "+w.image) {
		t.Fatalf("pull: %d %s%s", code, out, errOut)
	}
	var list server.ImageList
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		code, out, _ := run("images", "--json")
		list = server.ImageList{}
		if err := json.Unmarshal([]byte(out), &list); code == 0 && err == nil && len(list.Images) == 1 {
			break
		}
	}
	if len(list.Images) != 1 || list.Images[0].Image != w.image || !strings.HasPrefix(list.Images[0].Digest, "sha256:") ||
		list.Images[0].SizeBytes == 0 || list.Images[0].PinnedUntil != nil || list.Images[0].InUse {
		t.Fatalf("images --json after the pull: %+v", list)
	}
	stream := exec.Command(w.bin, "events", "--since", "0")
	stream.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOST_AGENT_URL=" + agent.base}, env...)
	if line := <-untilLine(t, stream, "image.pulled "+w.image); !strings.Contains(line, "status=pulled digest="+list.Images[0].Digest) {
		t.Errorf("events: %q, want the image.pulled event with its digest", line)
	}
	code, out, errOut := run("pull", "--pin-hours", "3", w.image)
	if code != 0 || !strings.Contains(out, "present: "+w.image+" "+list.Images[0].Digest) {
		t.Errorf("pull of a present image: %d %s%s", code, out, errOut)
	}
	code, out, _ = run("images")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "IMAGE") || !strings.HasPrefix(lines[1], w.image+" ") ||
		!strings.Contains(lines[1], time.Now().Add(3*time.Hour).UTC().Format("2006-01-02T")) || !strings.HasSuffix(lines[1], "no") {
		t.Errorf("images: %d\n%s", code, out)
	}
	if code, _, errOut := run("pull", "bad image!"); code != 1 || !strings.Contains(errOut, "400") {
		t.Errorf("pull of a bad reference: %d %q, want 1 and the agent's 400", code, errOut)
	}
	for _, args := range [][]string{{"pull"}, {"images", "x"}, {"pull", "--pin-hours", "x", "a"}} {
		if code, _, _ := run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
