package network

import (
	"context"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime/hostport"
)

func TestSpecOpts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := oci.GenerateSpec(namespaces.WithNamespace(ctx, "t"), nil, &containers.Container{ID: "web-1"})
	if err != nil {
		t.Fatal(err)
	}
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/hosts", Source: "/elsewhere", Type: "bind"})
	a := Attachment{
		ID: "web-1", NetNS: "/var/run/netns/host-agent-web-1", Hostname: "web-1",
		Ports: []hostport.Mapping{{ContainerPort: 22, Protocol: "tcp", HostPort: 40017}},
		Files: Files{ResolvConf: "/s/resolv.conf", Hosts: "/s/hosts", Hostname: "/s/hostname"},
	}
	if err := a.SpecOpts("203.0.113.9")(ctx, nil, &containers.Container{ID: "web-1"}, s); err != nil {
		t.Fatal(err)
	}
	var netns string
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			if netns != "" {
				t.Fatal("two network namespaces")
			}
			netns = ns.Path
		}
	}
	if netns != a.NetNS {
		t.Fatalf("network namespace %q, want %q", netns, a.NetNS)
	}
	if s.Hostname != "web-1" {
		t.Fatalf("hostname %q", s.Hostname)
	}
	hosts := 0
	for _, m := range s.Mounts {
		if m.Destination == "/etc/hosts" {
			hosts++
			if m.Source != "/s/hosts" || !slices.Contains(m.Options, "ro") {
				t.Errorf("/etc/hosts mount %+v", m)
			}
		}
	}
	if hosts != 1 {
		t.Fatalf("%d mounts on /etc/hosts", hosts)
	}
	for _, want := range []string{"HOST_PORT_TCP_22=40017", "PUBLIC_IP=203.0.113.9"} {
		if !slices.Contains(s.Process.Env, want) {
			t.Errorf("env %v lacks %s", s.Process.Env, want)
		}
	}
}
