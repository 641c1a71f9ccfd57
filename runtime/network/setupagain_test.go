package network

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// SetupAgain (a task was created in the namespace beside an ADD the agent
// did not see finish) sets the instance up again in the same namespace:
// the task's namespace gets the address, one lease is held, only the new
// ports are forwarded, and the generated files are the same files.
func TestSetupAgainKeepsTheNamespace(t *testing.T) {
	tn := newTestNet(t, "10.215.66.0/24", nil)
	ctx := context.Background()
	first := []hostport.Mapping{{ContainerPort: 22, Protocol: "tcp", HostPort: 45211}}
	second := []hostport.Mapping{{ContainerPort: 22, Protocol: "tcp", HostPort: 45212}}
	a, err := tn.net.Setup(ctx, "again", first, "")
	if err != nil {
		t.Fatal(err)
	}
	inode := func(p string) uint64 {
		t.Helper()
		var st unix.Stat_t
		must(t, unix.Stat(p, &st))
		return st.Ino
	}
	ns, hosts := inode(a.NetNS), inode(a.Files.Hosts)
	b, err := tn.net.SetupAgain(ctx, "again", second, "")
	if err != nil {
		t.Fatal(err)
	}
	if inode(b.NetNS) != ns || inode(b.Files.Hosts) != hosts {
		t.Fatal("SetupAgain replaced the namespace or the hosts file the task holds")
	}
	out, err := exec.Command("nsenter", "--net="+b.NetNS, "ip", "-o", "-4", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), " "+b.IP.String()+"/") {
		t.Fatalf("eth0 in the kept namespace: %v %s, want %s", err, out, b.IP)
	}
	if leases, _ := tn.net.leases(); len(leases) != 1 {
		t.Fatalf("leases after setting up again: %v", leases)
	}
	rules := natRulesFor(t, "again", tn.net.cfg.NetworkName)
	if strings.Contains(rules, "45211") || !strings.Contains(rules, "45212") {
		t.Fatalf("portmap rules after setting up again:\n%s", rules)
	}
	must(t, tn.net.Teardown(ctx, "again", second))
	if rules := natRulesFor(t, "again", tn.net.cfg.NetworkName); rules != "" || isNetNS(b.NetNS) {
		t.Fatalf("left after teardown: namespace %v, rules:\n%s", isNetNS(b.NetNS), rules)
	}
}
