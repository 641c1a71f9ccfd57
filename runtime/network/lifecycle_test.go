package network

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// cycles is how many setups and teardowns TestCyclesLeaveNothing runs.
const cycles = 50

// Setup and teardown with published ports, many times over: the numbers of
// iptables rules (all tables), IPAM leases, network namespaces and veths
// are the same after as before. The baseline is taken after one cycle:
// portmap's first ADD creates its shared CNI-HOSTPORT-DNAT chain and the
// jumps to it, which it never removes (other CNI users share them).
func TestCyclesLeaveNothing(t *testing.T) {
	tn := newTestNet(t, "10.215.63.0/24", nil)
	ctx := context.Background()
	alloc := hostport.NewAllocator(hostport.Range{First: 45100, Last: 45199}, nil)
	reqs := []hostport.PortRequest{{ContainerPort: 22}, {ContainerPort: 8888}, {ContainerPort: 53, Protocol: hostport.UDP}}
	cycle := func(i int) {
		id := fmt.Sprintf("cycle-%d", i)
		ports, err := alloc.Reserve(id, reqs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tn.net.Setup(ctx, id, ports, ""); err != nil {
			t.Fatalf("cycle %d: Setup: %v", i, err)
		}
		if err := tn.net.Teardown(ctx, id, ports); err != nil {
			t.Fatalf("cycle %d: Teardown: %v", i, err)
		}
		alloc.Release(id)
	}
	cycle(-1)
	before := tn.counts()
	for i := range cycles {
		cycle(i)
	}
	after := tn.counts()
	t.Logf("%d cycles: before %+v, after %+v", cycles, before, after)
	if before != after {
		t.Fatalf("%d cycles changed the counts: before %+v, after %+v", cycles, before, after)
	}
}

// A repeated Setup for one ID (a retry after a crash) deletes what the
// first one added, with the first one's ports: no second lease, and the
// first ports are no longer forwarded.
func TestSetupTwiceDeletesTheFirst(t *testing.T) {
	tn := newTestNet(t, "10.215.64.0/24", nil)
	ctx := context.Background()
	first := []hostport.Mapping{{ContainerPort: 22, Protocol: "tcp", HostPort: 45201}}
	second := []hostport.Mapping{{ContainerPort: 22, Protocol: "tcp", HostPort: 45202}}
	if _, err := tn.net.Setup(ctx, "twice", first, ""); err != nil {
		t.Fatal(err)
	}
	a, err := tn.net.Setup(ctx, "twice", second, "")
	if err != nil {
		t.Fatal(err)
	}
	leases, _ := tn.net.leases()
	if len(leases) != 1 {
		t.Fatalf("leases after two setups of one ID: %v", leases)
	}
	rules := natRulesFor(t, "twice", tn.net.cfg.NetworkName)
	if strings.Contains(rules, "45201") || !strings.Contains(rules, "45202") {
		t.Fatalf("portmap rules after the second setup:\n%s", rules)
	}
	if !isNetNS(a.NetNS) {
		t.Fatal("namespace gone after the second setup")
	}
	must(t, tn.net.Teardown(ctx, "twice", second))
	if rules := natRulesFor(t, "twice", tn.net.cfg.NetworkName); rules != "" {
		t.Fatalf("rules left after teardown:\n%s", rules)
	}
}

// A failed ADD (the subnet's addresses are all taken) is followed by DEL:
// the failed instance holds no lease, namespace, rule or journal entry.
func TestFailedSetupLeavesNothing(t *testing.T) {
	// A /29 has 5 addresses for rentals after the network, gateway and
	// broadcast.
	tn := newTestNet(t, "10.215.65.0/29", nil)
	ctx := context.Background()
	var ok int
	for i := range 10 {
		id := fmt.Sprintf("full-%d", i)
		_, err := tn.net.Setup(ctx, id, []hostport.Mapping{{ContainerPort: 80, Protocol: "tcp", HostPort: uint16(45300 + i)}}, "")
		if err == nil {
			ok++
			continue
		}
		t.Logf("setup %d failed as expected: %v", i, err)
		before := ok
		c := tn.counts()
		if c.Leases != before || c.Journal != before {
			t.Fatalf("after a failed setup: %+v, want %d leases and journal entries", c, before)
		}
		if fileExists(tn.net.NetNSPath(id)) {
			t.Fatalf("namespace of the failed setup left at %s", tn.net.NetNSPath(id))
		}
		if r := natRulesFor(t, id, tn.net.cfg.NetworkName); r != "" {
			t.Fatalf("portmap rules of the failed setup left:\n%s", r)
		}
		if _, err := os.Stat(tn.net.filesDir(id)); err == nil {
			t.Fatal("files of the failed setup left")
		}
		return
	}
	t.Fatalf("%d setups on a /29 all succeeded", ok)
}

// A crash after ADD (the process is gone, nothing was torn down) is
// cleaned by Sweep at the next start, in three shapes: everything left; the
// namespace gone too (a reboot); and the journal lost as well, where only
// the namespace, the lease and portmap's rules tell.
func TestSweepCleansUpAfterACrash(t *testing.T) {
	tn := newTestNet(t, "10.215.66.0/24", nil)
	ctx := context.Background()
	ports := func(p uint16) []hostport.Mapping {
		return []hostport.Mapping{{ContainerPort: 22, Protocol: "tcp", HostPort: p}, {ContainerPort: 53, Protocol: "udp", HostPort: p + 1}}
	}
	if _, err := tn.net.Setup(ctx, "warm", ports(45400), ""); err != nil {
		t.Fatal(err)
	}
	must(t, tn.net.Teardown(ctx, "warm", ports(45400)))
	before := tn.counts()

	if _, err := tn.net.Setup(ctx, "live", ports(45410), ""); err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"crash-all", "crash-reboot", "crash-nojournal"} {
		if _, err := tn.net.Setup(ctx, id, ports(uint16(45420+10*i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	must(t, removeNetNS(tn.net.NetNSPath("crash-reboot")))
	must(t, tn.net.removeJournal("crash-nojournal"))

	// The agent restarts: a new Network on the same configuration.
	restarted, err := New(tn.net.cfg)
	if err != nil {
		t.Fatal(err)
	}
	must(t, restarted.Init(ctx))
	res, err := restarted.Sweep(ctx, func(id string) bool { return id == "live" })
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if len(res.TornDown) != 3 {
		t.Errorf("Sweep tore down %v, want the three crashed instances", res.TornDown)
	}
	for _, id := range []string{"crash-all", "crash-reboot", "crash-nojournal"} {
		if r := natRulesFor(t, id, tn.net.cfg.NetworkName); r != "" {
			t.Errorf("%s: rules left:\n%s", id, r)
		}
		if fileExists(tn.net.NetNSPath(id)) {
			t.Errorf("%s: namespace left", id)
		}
	}
	if !isNetNS(tn.net.NetNSPath("live")) || natRulesFor(t, "live", tn.net.cfg.NetworkName) == "" {
		t.Fatal("Sweep removed the live instance's network")
	}
	must(t, restarted.Teardown(ctx, "live", nil))
	if after := tn.counts(); after != before {
		out, _ := exec.Command("iptables-save").Output()
		t.Fatalf("after the sweep and the live one's teardown: %+v, before the crashes %+v\n%s", after, before, out)
	}
}

// A real crash: a child process sets up an instance and is killed with
// SIGKILL before it tears anything down; Sweep in this process cleans up.
func TestSweepAfterKill9(t *testing.T) {
	tn := newTestNet(t, "10.215.67.0/24", nil)
	ctx := context.Background()
	if _, err := tn.net.Setup(ctx, "warm", []hostport.Mapping{{ContainerPort: 22, Protocol: "tcp", HostPort: 45500}}, ""); err != nil {
		t.Fatal(err)
	}
	must(t, tn.net.Teardown(ctx, "warm", nil))
	before := tn.counts()

	cfg := tn.net.cfg
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.v")
	cmd.Env = append(os.Environ(),
		"HATEST_CRASH=1",
		"HATEST_SUBNET="+cfg.Subnet.String(), "HATEST_NAME="+cfg.NetworkName, "HATEST_BRIDGE="+cfg.Bridge,
		"HATEST_CHAINS="+cfg.ChainPrefix, "HATEST_NSPREFIX="+cfg.NetNSPrefix, "HATEST_IPAM="+cfg.IPAMDataDir,
		"HATEST_STATE="+cfg.StateDir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	must(t, cmd.Start())
	buf := make([]byte, 4096)
	var got strings.Builder
	for !strings.Contains(got.String(), "READY") {
		n, err := out.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("helper ended before it was ready: %s", got.String())
		}
	}
	must(t, cmd.Process.Kill())
	_ = cmd.Wait()
	if r := natRulesFor(t, "killed", cfg.NetworkName); r == "" {
		t.Fatal("the killed helper left no portmap rules: it did not set up")
	}
	if _, err := tn.net.Sweep(ctx, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if after := tn.counts(); after != before {
		t.Fatalf("after kill -9 and Sweep: %+v, before %+v", after, before)
	}
}

// TestCrashHelper is TestSweepAfterKill9's child process.
func TestCrashHelper(t *testing.T) {
	if os.Getenv("HATEST_CRASH") != "1" {
		t.Skip("child process of TestSweepAfterKill9")
	}
	cfg := Config{
		NetworkName: os.Getenv("HATEST_NAME"), Bridge: os.Getenv("HATEST_BRIDGE"),
		ChainPrefix: os.Getenv("HATEST_CHAINS"), NetNSPrefix: os.Getenv("HATEST_NSPREFIX"),
		IPAMDataDir: os.Getenv("HATEST_IPAM"), StateDir: os.Getenv("HATEST_STATE"),
	}
	cfg.Subnet = mustPrefix(os.Getenv("HATEST_SUBNET"))
	cfg.DNS = tnDNS
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Setup(context.Background(), "killed", []hostport.Mapping{{ContainerPort: 22, Protocol: "tcp", HostPort: 45510}}, ""); err != nil {
		t.Fatal(err)
	}
	fmt.Println("READY")
	select {}
}

func natRulesFor(t *testing.T, id, network string) string {
	t.Helper()
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	needle := fmt.Sprintf(`dnat name: \"%s\" id: \"%s\"`, network, id)
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, needle) {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
