package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime"
	"github.com/host-agent/host-agent/runtime/events"
	"github.com/host-agent/host-agent/server/reporter"
)

// logs returns an instance's output.
func (a *agentProc) logs(id string) string {
	a.t.Helper()
	req, _ := http.NewRequest("GET", a.base+"/instances/"+id+"/logs?tail=1000", nil)
	req.Header.Set("Authorization", "Bearer "+e2eToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// waitLog waits until an instance's output contains want, and returns it.
func (a *agentProc) waitLog(id, want string) string {
	a.t.Helper()
	var out string
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if out = a.logs(id); strings.Contains(out, want) {
			return out
		}
	}
	a.t.Fatalf("%s never printed %q; output:\n%s", id, want, out)
	return ""
}

// hostPorts reads the ports of an answer: protocol/container port -> host
// port.
func hostPorts(t *testing.T, body map[string]any) map[string]int {
	t.Helper()
	out := map[string]int{}
	list, _ := body["ports"].([]any)
	for _, p := range list {
		m := p.(map[string]any)
		out[fmt.Sprintf("%v/%v", m["protocol"], m["container_port"])] = int(m["host_port"].(float64))
	}
	return out
}

// containerLabels reads an instance's labels from containerd directly.
func containerLabels(t *testing.T, addr, id string) map[string]string {
	t.Helper()
	cl, err := containerd.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := namespaces.WithNamespace(context.Background(), "rentals")
	c, err := cl.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Labels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// listenAnyAddr picks a free port for the agent to listen on every address
// (so that the test can show a rental cannot reach it), outside the host
// port range.
func listenAnyAddr(t *testing.T) (listen, call string) {
	_, port, _ := net.SplitHostPort(freeAddr(t))
	return "0.0.0.0:" + port, "127.0.0.1:" + port
}

// TestAgentRentalNetwork drives the built agent as the scheduler would and
// checks a rental's network from outside and from inside its container:
// its published TCP and UDP ports answer a "user" namespace on the host's
// address and the host ports the API returned, which the payload finds in
// its environment; the mapping is answered alike by a repeated start, GET,
// the instance.running event, the heartbeat; and from the container, hosts
// on the provider's LAN (10.x, 192.168.x), the metadata address, another
// rental, the host's bridge address and the agent's API do not answer,
// while an "internet" host does and a name resolves through the generated
// resolv.conf and the RENTAL_DNS resolver, which sits in a blocked range.
func TestAgentRentalNetwork(t *testing.T) {
	w := newWorld(t)
	user := testenv.AddPeer(t, "user", "198.18.1.1", "198.18.1.2", 24)
	inet := testenv.AddPeer(t, "internet", "198.18.2.1", "198.18.2.2", 24)
	lan10 := testenv.AddPeer(t, "lan10", "10.217.1.1", "10.217.1.2", 24)
	lan192 := testenv.AddPeer(t, "lan192", "192.168.217.1", "192.168.217.2", 24)
	meta := testenv.AddPeer(t, "metadata", "169.254.217.1", "169.254.217.2", 30, "169.254.169.254")
	dns := testenv.AddPeer(t, "dns", "10.217.53.1", "10.217.53.2", 24)
	metaAddr := netip.MustParseAddr("169.254.169.254")
	for _, p := range []*testenv.Peer{inet, lan10, lan192, meta, dns} {
		testenv.ServeIn(t, p.NS, "0.0.0.0:7000", p.Name)
	}
	testenv.ServeDNS(t, dns.NS, map[string]string{"payload.test.": "198.18.2.77"})
	hostSvc := testenv.ServeIn(t, "", "0.0.0.0:0", "host")

	central := &centralServer{answer: `{}`}
	srv := httptest.NewServer(central)
	t.Cleanup(srv.Close)
	listen, call := listenAnyAddr(t)
	_, apiPortS, _ := net.SplitHostPort(listen)
	apiPort, _ := strconv.Atoi(apiPortS)
	env := append(slices.Clone(w.env), "RENTAL_DNS="+dns.Addr.String(), "PUBLIC_IP="+user.Host.String(),
		"API_SERVER_URL="+srv.URL, "HEARTBEAT_INTERVAL=1s")
	agent := startAgentOn(t, w.bin, env, w.agentLog, listen, call)
	evs := agent.eventStream("")

	code, body := agent.call("POST", "/start_instance", map[string]any{"instance_id": "net-b", "image": w.image, "command": []string{"serve", "7000", "sleep", "inf"}})
	if code != http.StatusOK {
		t.Fatalf("start net-b: %d %v", code, body)
	}
	bIP := netip.MustParseAddr(containerLabels(t, w.ctd.Address, "net-b")[runtime.LabelIP])
	gw := w.net.subnet.Addr().Next()
	br := w.net.cfg.Bridge

	targets := []struct {
		name string
		addr netip.Addr
		port int
		dev  string
	}{
		{"lan10", lan10.Addr, 7000, lan10.HostIf},
		{"lan192", lan192.Addr, 7000, lan192.HostIf},
		{"metadata", metaAddr, 7000, meta.HostIf},
		{"the resolver's host, not on port 53", dns.Addr, 7000, dns.HostIf},
		{"rental net-b", bIP, 7000, br},
		{"a host service on the bridge address", gw, hostSvc, br},
		{"the agent's API on the bridge address", gw, apiPort, br},
	}
	// Controls: each target answers the host, so a failure from the rental
	// is the rules' doing. Rental net-b's server may still be starting.
	for _, tc := range targets {
		testenv.MustRouteInto(t, tc.addr, tc.dev)
		if tc.port == apiPort {
			continue
		}
		var err error
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if _, err = testenv.Greeting(t, "", "tcp", tc.addr, tc.port); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("control: %s (%s:%d) does not answer the host: %v", tc.name, tc.addr, tc.port, err)
		}
	}
	testenv.MustRouteInto(t, inet.Addr, inet.HostIf)
	testenv.MustRouteInto(t, dns.Addr, dns.HostIf)
	testenv.MustRouteInto(t, user.Host, user.HostIf)

	cmd := []string{"serve", "8080", "env", "cat", "/proc/self/status", "cat", "/etc/hostname", "cat", "/etc/hosts"}
	for _, tc := range targets {
		cmd = append(cmd, "dial", "tcp", netip.AddrPortFrom(tc.addr, uint16(tc.port)).String())
	}
	cmd = append(cmd, "dial", "tcp", netip.AddrPortFrom(inet.Addr, 7000).String(), "lookup", "payload.test", "sleep", "inf")
	start := map[string]any{
		"instance_id": "net-a", "image": w.image, "command": cmd,
		"ports": []map[string]any{{"container_port": 8080}, {"container_port": 8080, "protocol": "udp"}},
	}
	code, body = agent.call("POST", "/start_instance", start)
	if code != http.StatusOK {
		t.Fatalf("start net-a: %d %v", code, body)
	}
	ports := hostPorts(t, body)
	tcpPort, udpPort := ports["tcp/8080"], ports["udp/8080"]
	if len(ports) != 2 || tcpPort < 40000 || tcpPort > 40999 || udpPort < 40000 || udpPort > 40999 {
		t.Fatalf("start answered ports %v (%v)", ports, body["ports"])
	}

	// From the user's namespace, on the host's address.
	want := fmt.Sprintf("HOST_PORT_TCP_8080=%d HOST_PORT_UDP_8080=%d from %s", tcpPort, udpPort, user.Addr)
	for _, proto := range []string{"tcp", "udp"} {
		var got string
		var err error
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if got, err = testenv.Greeting(t, user.NS, proto, user.Host, ports[proto+"/8080"]); err == nil {
				break
			}
		}
		if err != nil || got != want {
			t.Fatalf("%s host port %d from the user: %q, %v; want %q", proto, ports[proto+"/8080"], got, err, want)
		}
	}

	// From inside the container.
	out := agent.waitLog("net-a", "lookup payload.test:")
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ": "); ok && (strings.HasPrefix(k, "dial ") || strings.HasPrefix(k, "lookup ")) {
			lines[k] = v
		}
	}
	t.Logf("from inside net-a: %q", lines)
	for _, tc := range targets {
		k := "dial " + netip.AddrPortFrom(tc.addr, uint16(tc.port)).String()
		if v, ok := lines[k]; !ok || !strings.HasPrefix(v, "error:") {
			t.Errorf("from the rental, %s answered: %s = %q", tc.name, k, v)
		}
	}
	if v := lines["dial "+netip.AddrPortFrom(inet.Addr, 7000).String()]; v != "internet from "+inet.Host.String() {
		t.Errorf("from the rental, the internet host answered %q, want it masqueraded", v)
	}
	if v := lines["lookup payload.test"]; v != "198.18.2.77" {
		t.Errorf("lookup through the generated resolv.conf: %q", v)
	}
	for _, e := range []string{fmt.Sprintf("HOST_PORT_TCP_8080=%d\n", tcpPort), fmt.Sprintf("HOST_PORT_UDP_8080=%d\n", udpPort), "PUBLIC_IP=198.18.1.1\n"} {
		if !strings.Contains(out, e) {
			t.Errorf("the payload's environment lacks %q", e)
		}
	}
	aIP := containerLabels(t, w.ctd.Address, "net-a")[runtime.LabelIP]
	if !strings.Contains(out, "\nnet-a\n") || !strings.Contains(out, aIP+"\tnet-a\n") {
		t.Errorf("the generated hostname and hosts (address %s) are not what the payload reads:\n%s", aIP, out)
	}
	if caps := capLine(out, "CapBnd:"); caps&(1<<13) != 0 {
		t.Errorf("CAP_NET_RAW in the bounding set: %x", caps)
	}

	// The same mapping everywhere.
	code, again := agent.call("POST", "/start_instance", start)
	if code != http.StatusOK || fmt.Sprint(hostPorts(t, again)) != fmt.Sprint(ports) {
		t.Errorf("repeated start: %d %v, first %v", code, again["ports"], ports)
	}
	if _, got := agent.call("GET", "/instances/net-a", nil); fmt.Sprint(hostPorts(t, got)) != fmt.Sprint(ports) {
		t.Errorf("GET /instances/net-a ports %v", got["ports"])
	}
	_, list := agent.call("GET", "/instances", nil)
	for _, i := range list["instances"].([]any) {
		if m := i.(map[string]any); m["instance_id"] == "net-a" && fmt.Sprint(hostPorts(t, m)) != fmt.Sprint(ports) {
			t.Errorf("GET /instances ports %v", m["ports"])
		}
	}
	ev := await(t, evs, "net-a", events.TypeInstanceRunning)
	if len(ev.Ports) != 2 || int(ev.Ports[0].HostPort) != tcpPort || int(ev.Ports[1].HostPort) != udpPort {
		t.Errorf("instance.running ports %+v", ev.Ports)
	}
	central.waitFor(t, "a heartbeat with net-a's ports", func(c *centralServer) bool {
		return lastHeartbeatWith(c, 0, func(hb reporter.HeartbeatRequest) bool {
			i := slices.IndexFunc(hb.Instances, func(s reporter.InstanceState) bool { return s.InstanceID == "net-a" })
			return i >= 0 && len(hb.Instances[i].Ports) == 2 && int(hb.Instances[i].Ports[0].HostPort) == tcpPort
		})
	})
	_, host := agent.call("GET", "/host", nil)
	n, _ := host["network"].(map[string]any)
	if n == nil || n["subnet"] != w.net.subnet.String() || n["port_range"] != "40000-40999" || n["ports_free"] != float64(998) || n["public_ip"] != "198.18.1.1" {
		t.Errorf("GET /host network %v", host["network"])
	}

	for _, id := range []string{"net-a", "net-b"} {
		if code, body := agent.call("POST", "/terminate_instance", map[string]any{"instance_id": id, "timeout_seconds": 0}); code != http.StatusOK {
			t.Fatalf("terminate %s: %d %v", id, code, body)
		}
	}
	if got, err := testenv.Greeting(t, user.NS, "tcp", user.Host, tcpPort); err == nil {
		t.Errorf("host port %d still answers after the terminate: %q", tcpPort, got)
	}
}

// capLine reads a hexadecimal capability set from /proc/self/status
// output.
func capLine(out, key string) uint64 {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return n
		}
	}
	return 1 << 63
}
