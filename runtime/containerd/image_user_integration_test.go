package containerd

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/conformance"
	"github.com/host-agent/host-agent/runtime/events"
)

// pushUserImage pushes the payload with testPasswd and testGroup and USER
// set to user.
func pushUserImage(t *testing.T, repoTag, user string) string {
	t.Helper()
	ref, err := registry.PushUserImage(repoTag, user, testPasswd, testGroup)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// TestImageUserOnContainerd runs images whose USER is a name, a number and
// user:group on the real daemon, and reads the ids the process got.
func TestImageUserOnContainerd(t *testing.T) {
	needDaemon(t)
	t.Parallel()
	ns, rec := testNamespace(t), conformance.NewRecorder()
	r := newRuntime(t, daemon.Address, ns, rec)
	for i, tc := range []struct {
		user, uid, gid, groups string
	}{
		{"app", "1000", "1001", "44 2000"},
		{"1000", "1000", "1001", "44 2000"},
		{"app:extra", "1000", "2000", ""},
		{"4242:4343", "4242", "4343", ""},
		{"", "0", "0", ""},
	} {
		id := fmt.Sprintf("user-%d", i)
		ref := pushUserImage(t, fmt.Sprintf("user-image-%d:latest", i), tc.user)
		spec := payloadSpec(id, "cat", "/proc/self/status")
		spec.Image = ref
		if _, err := r.Start(ctx(t), spec); err != nil {
			t.Fatalf("USER %q: start: %v", tc.user, err)
		}
		rec.WaitFor(t, id, events.TypeInstanceExited, 30*time.Second)
		out, _, err := r.Logs(ctx(t), id, 100)
		if err != nil {
			t.Fatal(err)
		}
		status := map[string]string{}
		for _, line := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				status[k] = strings.Join(strings.Fields(v), " ")
			}
		}
		wantUID := strings.Repeat(tc.uid+" ", 4)
		wantGID := strings.Repeat(tc.gid+" ", 4)
		if status["Uid"] != strings.TrimSpace(wantUID) || status["Gid"] != strings.TrimSpace(wantGID) || status["Groups"] != tc.groups {
			t.Errorf("USER %q: Uid %q Gid %q Groups %q; want uid %s gid %s groups %q", tc.user, status["Uid"], status["Gid"], status["Groups"], tc.uid, tc.gid, tc.groups)
		}
		if err := r.Terminate(ctx(t), id, time.Second); err != nil {
			t.Fatal(err)
		}
	}
}
