package containerd

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/crypto/ssh"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/share"
)

// waitForLog waits until the instance's output holds every want.
func waitForLog(t *testing.T, r *agent, id string, want ...string) string {
	t.Helper()
	var logs string
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _, err := r.Logs(ctx(t), id, 1000)
		if err != nil {
			t.Fatal(err)
		}
		logs = string(b)
		missing := false
		for _, w := range want {
			if !strings.Contains(logs, w) {
				missing = true
			}
		}
		if !missing {
			return logs
		}
		if time.Now().After(deadline) {
			t.Fatalf("output of %s lacks %q:\n%s", id, want, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A GPU rental gets a /dev/shm of half its memory and unlimited memlock; the
// limits it names are set.
func TestGPURentalShmAndUlimits(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	host := newGPUHost(t, nil)
	r, _ := host.shareAgent(t, testNamespace(t), conformance.NewRecorder(), share.Options{MemoryMB: 8000, CPUs: 2, GPUs: 8})
	spec := payloadSpec("dl", "statfs", "/dev/shm", "cat", "/proc/self/limits", "echo", "done", "sleep", "inf")
	spec.GPURequest = runtime.GPURequest{Count: 1}
	// Lowered, not raised: raising needs CAP_SYS_RESOURCE, which a sandbox
	// may withhold.
	spec.Ulimits = map[string]int64{"nofile": 4096, "core": 0}
	if _, err := r.Start(ctx(t), spec); err != nil {
		t.Fatal(err)
	}
	logs := waitForLog(t, r, "dl", "done")
	if first := strings.SplitN(logs, "\n", 2)[0]; first != "524288000" {
		t.Errorf("/dev/shm is %s bytes, want 500 MiB (half of 1000 MiB)", first)
	}
	want := [][]string{
		{"Max open files", "4096", "4096"},
		{"Max core file size", "0", "0"},
	}
	if r.be.canRaise(ctx(t)) {
		want = append(want, []string{"Max locked memory", "unlimited", "unlimited"})
	} else {
		t.Log("no CAP_SYS_RESOURCE here: memlock stays at the default")
	}
	for _, want := range want {
		found := false
		for _, line := range strings.Split(logs, "\n") {
			if strings.HasPrefix(line, want[0]) {
				f := strings.Fields(strings.TrimPrefix(line, want[0]))
				found = len(f) >= 2 && f[0] == want[1] && f[1] == want[2]
				if !found {
					t.Errorf("%s", line)
				}
			}
		}
		if !found {
			t.Errorf("no %q %s/%s in /proc/self/limits:\n%s", want[0], want[1], want[2], logs)
		}
	}
}

// The tenant's keys are at /root/.ssh/authorized_keys, and the tenant cannot
// change them; the file goes with the instance.
func TestSSHAuthorizedKeysReadOnly(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns := testNamespace(t)
	r := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " tenant@laptop"
	spec := payloadSpec("sshd", "cat", "/root/.ssh/authorized_keys", "write", "/root/.ssh/authorized_keys",
		"write", "/root/.ssh/other", "echo", "done", "sleep", "inf")
	spec.SSHAuthorizedKeys = []string{key}
	if _, err := r.Start(ctx(t), spec); err != nil {
		t.Fatal(err)
	}
	logs := waitForLog(t, r, "sshd", "done")
	if !strings.HasPrefix(logs, key+"\n") {
		t.Errorf("authorized_keys inside:\n%s", logs)
	}
	if !strings.Contains(logs, "write /root/.ssh/authorized_keys: open /root/.ssh/authorized_keys: read-only file system") {
		t.Errorf("the tenant could write its authorized_keys:\n%s", logs)
	}
	cl, cctx := rawClient(t, daemon.Address, ns)
	c, err := cl.LoadContainer(cctx, "sshd")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Spec(cctx)
	if err != nil {
		t.Fatal(err)
	}
	var binds []string
	for _, m := range s.Mounts {
		if runtime.IsBindMount(m) {
			binds = append(binds, m.Source+" -> "+m.Destination+" "+strings.Join(m.Options, ","))
		}
	}
	files := r.be.filesDir("sshd")
	if len(binds) != 1 || !strings.HasPrefix(binds[0], files+"/authorized_keys -> /root/.ssh/authorized_keys ro,") {
		t.Errorf("bind mounts: %q", binds)
	}
	if err := r.Terminate(ctx(t), "sshd", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(files); !os.IsNotExist(err) {
		t.Errorf("instance files left after terminate: %v", err)
	}
}

// A limit above the agent's own hard limit, where runc cannot raise
// limits, is refused before anything is made, naming the limit and the
// ceiling; a limit that still reaches runc and is refused there is the
// same kind of error. Where runc can raise limits, the start goes through.
func TestUlimitAboveCeiling(t *testing.T) {
	needDaemon(t)
	// Not parallel: its probes share the probe container's ID with
	// TestProbesLeaveTenantsAlone's.
	hard, ok := runtime.UlimitCeiling("nofile")
	if !ok || hard == runtime.RlimitInfinity || hard >= runtime.MaxNofile {
		t.Skipf("this process's hard nofile (%d) leaves no valid value above it", hard)
	}
	ns := testNamespace(t)
	r := newRuntime(t, daemon.Address, ns, conformance.NewRecorder())
	can, err := r.be.probeRaise(ctx(t))
	if err != nil {
		t.Fatalf("memlock probe: %v", err)
	}
	spec := payloadSpec("many-files", "sleep", "inf")
	spec.Ulimits = map[string]int64{"nofile": int64(hard) + 1}
	_, err = r.Start(ctx(t), spec)
	if can {
		t.Logf("runc can raise limits here: nofile %d goes through", hard+1)
		if err != nil {
			t.Fatalf("start with nofile %d where runc can raise it: %v", hard+1, err)
		}
		return
	}
	var ue *runtime.UlimitError
	if !errors.As(err, &ue) || !errdefs.IsFailedPrecondition(err) || ue.ErrorField() != "ulimits.nofile" || ue.Ceiling != hard || ue.Cause != nil {
		t.Fatalf("start with nofile %d above the ceiling of %d: %v, want it refused up front", hard+1, hard, err)
	}
	cl, cctx := rawClient(t, daemon.Address, ns)
	if left, err := cl.Containers(cctx); err != nil || len(left) != 0 {
		t.Fatalf("left after the refusal: %d containers (%v)", len(left), err)
	}
	if _, err := r.Get(ctx(t), "many-files"); !errdefs.IsNotFound(err) {
		t.Fatalf("instance after the refusal: %v", err)
	}
	// Were it to reach runc, its refusal is classified alike.
	err = convertErr(r.be.probeTask(ctx(t), oci.WithRlimit(&specs.POSIXRlimit{Type: "RLIMIT_NOFILE", Hard: hard + 1, Soft: hard + 1})))
	if !errors.As(err, &ue) || !errdefs.IsFailedPrecondition(err) || ue.ErrorField() != "ulimits.nofile" || ue.Cause == nil {
		t.Fatalf("runc refusing nofile %d: %v", hard+1, err)
	}
	// Within the ceiling, the same start goes through.
	spec.Ulimits["nofile"] = int64(hard)
	if _, err := r.Start(ctx(t), spec); err != nil {
		t.Fatalf("start with nofile %d: %v", hard, err)
	}
}
