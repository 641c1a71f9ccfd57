package containerd

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/runtime/network"
)

// A rental's task is created while CNI ADD runs: every rental still reads
// its own address in its /etc/hosts, written once ADD gave it, and its
// terminate leaves no namespace, lease or file of the network behind.
func TestNetworkedStartHostsNameTheAddress(t *testing.T) {
	needDaemon(t)
	needPlugins(t)
	testenv.LockHostNetwork(t)
	tn := newTestNetwork(t, nil)
	a := newRuntimeWith(t, testNamespace(t), events.NewHub(64, time.Now), func(o *Options) { o.Network = tn.net })
	ids := []string{"hosts-a", "hosts-b", "hosts-c", "hosts-d"}
	for _, id := range ids {
		inst, err := a.Start(ctx(t), payloadSpec(id, "cat", "/etc/hosts", "sleep", "inf"))
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		ip := inst.AgentLabels[runtime.LabelIP]
		if ip == "" {
			t.Fatalf("%s: no address in its labels %v", id, inst.AgentLabels)
		}
		want := ip + "\t" + network.Hostname(id) + "\n"
		var got string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			b, _ := os.ReadFile(a.logPath(id))
			if got = string(b); strings.Contains(got, want) {
				break
			}
		}
		if !strings.Contains(got, want) {
			t.Fatalf("%s's /etc/hosts does not name its address %s:\n%s", id, ip, got)
		}
	}
	for _, id := range ids {
		if err := a.Terminate(ctx(t), id, 0); err != nil {
			t.Fatalf("terminate %s: %v", id, err)
		}
	}
	if err := tn.checkNoOrphans(map[string]bool{}); err != nil {
		t.Fatal(err)
	}
}
