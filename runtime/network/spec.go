package network

import (
	"context"
	"slices"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// SpecOpts joins a container to the attachment: its pinned network
// namespace, its host name, the generated resolv.conf, hosts and hostname
// (read-only, replacing any mount of the same paths), the published ports
// in the environment (HOST_PORT_TCP_22=40017, and PUBLIC_IP when publicIP is
// set). Capabilities and sysctls are the confinement's (runtime/backend/confine.go:
// no CAP_NET_RAW, ICMP sockets, IPv6 off). Compose it after the image's
// configuration.
func (a Attachment) SpecOpts(publicIP string) oci.SpecOpts {
	return func(ctx context.Context, client oci.Client, c *containers.Container, s *specs.Spec) error {
		if err := oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: a.NetNS})(ctx, client, c, s); err != nil {
			return err
		}
		if a.Hostname != "" {
			s.Hostname = a.Hostname
		}
		if a.Files.ResolvConf != "" {
			mounts := a.Files.Mounts()
			s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool {
				return slices.ContainsFunc(mounts, func(n specs.Mount) bool { return n.Destination == m.Destination })
			})
			s.Mounts = append(s.Mounts, mounts...)
		}
		if env := hostport.Env(a.Ports, publicIP); len(env) > 0 {
			if err := oci.WithEnv(env)(ctx, client, c, s); err != nil {
				return err
			}
		}
		return nil
	}
}
