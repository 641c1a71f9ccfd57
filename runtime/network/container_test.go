package network

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/host-agent/host-agent/internal/testenv"
	"github.com/host-agent/host-agent/runtime/hostport"
)

// A real container, run by containerd in the attachment's namespace with
// SpecOpts, publishes a TCP and a UDP port: a client in a "user" namespace
// reaches it through the host's address and the host ports handed out, and
// the payload reports the same ports from its environment. It sees the
// generated resolv.conf. After containerd restarts, the port still answers.
func TestContainerPortsThroughContainerd(t *testing.T) {
	testenv.Require(t, "containerd", "containerd-shim-runc-v2", "runc")
	tn := newTestNet(t, "10.215.68.0/24", nil)
	user := tn.addPeer("user", "198.51.100.1", "198.51.100.2", 24)
	ctx := context.Background()

	cd, err := testenv.StartContainerd(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cd.Close() })
	reg := testenv.StartRegistry()
	t.Cleanup(reg.Close)
	ref, err := reg.PushPayload("net:latest")
	if err != nil {
		t.Fatal(err)
	}
	client, err := containerd.New(cd.Address, containerd.WithDefaultNamespace("nettest"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost))})
	img, err := client.Pull(ctx, ref, containerd.WithPullUnpack, containerd.WithResolver(resolver))
	if err != nil {
		t.Fatal(err)
	}

	alloc := hostport.NewAllocator(hostport.Range{First: 45600, Last: 45699}, nil)
	ports, err := alloc.Reserve("ctr-1", []hostport.PortRequest{{ContainerPort: 8080}, {ContainerPort: 8080, Protocol: hostport.UDP}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := tn.net.Setup(ctx, "ctr-1", ports, "")
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := client.NewContainer(ctx, "ctr-1",
		containerd.WithNewSnapshot("ctr-1", img),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("/payload", "serve", "8080", "sleep", "inf"), a.SpecOpts("")))
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	// Order of the teardown: task, container, then the network (DEL
	// before the namespace is unmounted).
	t.Cleanup(func() {
		ctx := context.Background()
		if st, err := task.Wait(ctx); err == nil {
			_ = task.Kill(ctx, syscall.SIGKILL)
			<-st
		}
		_, _ = task.Delete(ctx)
		_ = ctr.Delete(ctx, containerd.WithSnapshotCleanup)
		if err := tn.net.Teardown(ctx, "ctr-1", ports); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}

	// The host's address on the user's link.
	host := mustAddr("198.51.100.1")
	testenv.MustRouteInto(t, host, user.hostIf)
	want := fmt.Sprintf("HOST_PORT_TCP_8080=%d HOST_PORT_UDP_8080=%d from 198.51.100.2", ports[0].HostPort, ports[1].HostPort)
	reach := func(when string) {
		t.Helper()
		var got string
		var err error
		for range 50 { // the payload may not be listening yet
			if got, err = tcpGreeting(t, user.ns, host, int(ports[0].HostPort)); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil || got != want {
			t.Fatalf("%s: tcp host port %d answered %q, %v; want %q", when, ports[0].HostPort, got, err, want)
		}
		if got, err := udpGreeting(t, user.ns, host, int(ports[1].HostPort)); err != nil || got != want {
			t.Fatalf("%s: udp host port %d answered %q, %v; want %q", when, ports[1].HostPort, got, err, want)
		}
	}
	reach("running")

	// The shim writes the output to a file itself: nothing to copy.
	outPath := filepath.Join(t.TempDir(), "exec.out")
	spec, err := ctr.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pspec := *spec.Process
	pspec.Args = []string{"/payload", "cat", "/etc/resolv.conf", "cat", "/etc/hostname"}
	proc, err := task.Exec(ctx, "cat", &pspec, cio.LogFile(outPath))
	if err != nil {
		t.Fatal(err)
	}
	st, err := proc.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	es := <-st
	_, _ = proc.Delete(ctx)
	outb, _ := os.ReadFile(outPath)
	if code, _, _ := es.Result(); code != 0 {
		t.Fatalf("exec in the container exited %d: %s", code, outb)
	}
	if s := string(outb); !strings.Contains(s, "nameserver "+tnDNS[0].String()) || !strings.Contains(s, "ctr-1\n") {
		t.Fatalf("inside the container, resolv.conf and hostname read:\n%s", s)
	}

	if err := cd.Restart(); err != nil {
		t.Fatal(err)
	}
	reach("after containerd restarted")
}
