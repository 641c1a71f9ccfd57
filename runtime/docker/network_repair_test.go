package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	mnetwork "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/network"
	"github.com/host-agent/host-agent/runtime/network/dockernet"
)

// On each dockerd, managing iptables: after iptables -F of each of the
// agent's chains, after an ACCEPT put first in DOCKER-USER or INPUT, and
// after the jump's deletion, the rules differ (the readiness check fails)
// until the rules' Run loop puts them back, within 10 seconds; then a
// rental's probes of the metadata address and of the host fail again, and
// a connection it opened to them during the gap is cut. Each repair is
// counted.
func TestNetworkRulesRepaired(t *testing.T) {
	for _, name := range []string{debian, moby} {
		t.Run(name, func(t *testing.T) { testNetworkRulesRepaired(t, needDockerd(t, name)) })
	}
}

func testNetworkRulesRepaired(t *testing.T, shared *testenv.Dockerd) {
	testenv.LockHostNetwork(t)
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	tag := hex.EncodeToString(b)
	subnet := netip.MustParsePrefix(fmt.Sprintf("10.221.%d.0/24", b[0]))
	if err := network.CheckSubnet(subnet); err != nil {
		t.Fatal(err)
	}
	opts := NetworkOptions{Name: "hadr-" + tag, Config: dockernet.Config{
		Bridge: "hadr" + tag, Subnet: subnet, ChainPrefix: "HADR" + strings.ToUpper(tag),
		BlockedEgress: network.DefaultBlockedEgress,
	}}
	meta := testenv.AddPeer(t, "meta", "192.168.214.1", "192.168.214.2", 30, "169.254.169.254")
	metaAddr := netip.MustParseAddr("169.254.169.254")
	testenv.MustRouteInto(t, metaAddr, meta.HostIf)

	if !testenv.DockerChainsPresent() {
		t.Cleanup(func() { testenv.RemoveDockerChains(t) })
	}
	dir, err := os.MkdirTemp("", "ha-dr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The same daemon as the shared one, managing iptables.
	o := shared.Options()
	o.IPTables = true
	d, err := testenv.StartDockerd(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeRulesNaming(opts.Bridge) })
	t.Cleanup(d.Close)
	be, err := New(Options{Host: d.Host, AgentID: "nettest", StateDir: t.TempDir(), Network: &opts,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	t.Cleanup(func() {
		ctx := context.Background()
		if list, err := be.client.ContainerList(ctx, client.ContainerListOptions{All: true}); err == nil {
			for _, c := range list.Items {
				_, _ = be.client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
			}
		}
		if err := be.RemoveNetwork(ctx); err != nil {
			t.Error(err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	inst, err := be.Start(ctx, runtime.InstanceSpec{ID: "repair-" + tag, Image: payloadRef, Command: []string{"sleep", "inf"}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := be.client.ContainerInspect(ctx, inst.ContainerID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ep := res.Container.NetworkSettings.Networks[opts.Name]
	if ep == nil || !subnet.Contains(ep.Gateway) {
		t.Fatalf("the rental is not on network %s: %+v", opts.Name, res.Container.NetworkSettings.Networks)
	}
	gw := ep.Gateway
	testenv.MustRouteInto(t, gw, opts.Bridge)
	metaPort := testenv.ServeEcho(t, meta.NS, "0.0.0.0:0")
	hostPort := testenv.ServeEcho(t, "", gw.String()+":0")
	rentalNS := fmt.Sprintf("/proc/%d/ns/net", inst.Pid)
	targets := []struct {
		name string
		addr netip.Addr
		port int
	}{
		{"the metadata address", metaAddr, metaPort},
		{"the host", gw, hostPort},
	}
	blocked := func(when string) {
		t.Helper()
		for _, tg := range targets {
			if c, err := testenv.DialIn(t, rentalNS, tg.addr, tg.port); err == nil {
				ok := testenv.Echoes(c, "probe")
				c.Close()
				if ok {
					t.Errorf("%s: the rental reached %s", when, tg.name)
				}
			}
		}
	}
	blocked("before any change")

	rules := be.NetworkRules()
	repairs := 0.0
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"flush forward chain", []string{"-F", opts.ForwardChain()}},
		{"flush input chain", []string{"-F", opts.InputChain()}},
		{"ACCEPT first in DOCKER-USER", []string{"-I", dockerUserChain, "1", "-i", opts.Bridge, "-j", "ACCEPT"}},
		{"ACCEPT first in INPUT", []string{"-I", "INPUT", "1", "-i", opts.Bridge, "-j", "ACCEPT"}},
		{"jump deleted", []string{"-D", dockerUserChain, "-j", opts.ForwardChain()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out, err := exec.Command("iptables", append([]string{"-w"}, tc.args...)...).CombinedOutput(); err != nil {
				t.Fatalf("iptables %v: %v: %s", tc.args, err, out)
			}
			if err := rules.Check(ctx); err == nil {
				t.Fatal("Check passes with the rules changed")
			}
			var open []net.Conn
			for _, tg := range targets {
				c, err := testenv.DialIn(t, rentalNS, tg.addr, tg.port)
				if err != nil {
					continue // this change opens the other target only
				}
				t.Cleanup(func() { c.Close() })
				if testenv.Echoes(c, "in the gap") {
					open = append(open, c)
				}
			}
			if len(open) == 0 {
				t.Fatal("the change opened no gap: the test cannot see a cut")
			}
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { defer close(done); rules.Run(runCtx, network.DefaultRecheckInterval) }()
			deadline := time.Now().Add(10 * time.Second)
			for rules.Check(ctx) != nil {
				if time.Now().After(deadline) {
					stop()
					<-done
					t.Fatalf("rules not repaired within 10s: %v", rules.Check(ctx))
				}
				time.Sleep(100 * time.Millisecond)
			}
			stop()
			<-done
			repairs++
			if got := counterValue(t, rules.Collector()); got != repairs {
				t.Errorf("%s = %v, want %v", network.RuleRepairsMetric, got, repairs)
			}
			blocked("after the repair")
			for _, c := range open {
				if testenv.Echoes(c, "after the repair") {
					t.Errorf("a connection opened in the gap to %s survived the repair", c.RemoteAddr())
				}
			}
		})
	}
	// A daemon's network event triggers a check at once: with the
	// periodic check an hour away, creating a network repairs the rules.
	t.Run("network event", func(t *testing.T) {
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); rules.Run(runCtx, time.Hour) }()
		defer func() { stop(); <-done }()
		time.Sleep(200 * time.Millisecond) // a trigger left from the connection is used up
		iptables := exec.Command("iptables", "-w", "-F", opts.ForwardChain())
		if out, err := iptables.CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if err := rules.Check(ctx); err == nil {
			t.Fatal("Check passes with the chain flushed")
		}
		other := "hadr-ev-" + tag
		if _, err := be.client.NetworkCreate(ctx, other, client.NetworkCreateOptions{Driver: "bridge",
			IPAM:    &mnetwork.IPAM{Config: []mnetwork.IPAMConfig{{Subnet: netip.MustParsePrefix(fmt.Sprintf("10.222.%d.0/24", b[0]))}}},
			Options: map[string]string{optBridgeName: "hadre" + tag}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = be.client.NetworkRemove(context.Background(), other, client.NetworkRemoveOptions{}) })
		deadline := time.Now().Add(10 * time.Second)
		for rules.Check(ctx) != nil {
			if time.Now().After(deadline) {
				t.Fatalf("rules not repaired within 10s of a network event: %v", rules.Check(ctx))
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
