package network

import (
	"context"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// pingGroupRange lets every group open ICMP echo sockets, so that ping
// works without CAP_NET_RAW.
const pingGroupRange = "0 2147483647"

// SpecOpts joins a container to the attachment: its pinned network
// namespace, its host name, the generated resolv.conf, hosts and hostname
// (read-only, replacing any mount of the same paths), the published ports
// in the environment (HOST_PORT_TCP_22=40017, and PUBLIC_IP when publicIP is
// set), and no CAP_NET_RAW: raw sockets would let a tenant forge packets on
// the bridge. Compose it after the image's configuration.
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
		if s.Process != nil && s.Process.Capabilities != nil {
			caps := s.Process.Capabilities
			for _, set := range []*[]string{&caps.Bounding, &caps.Effective, &caps.Permitted, &caps.Inheritable, &caps.Ambient} {
				*set = slices.DeleteFunc(*set, func(c string) bool { return strings.EqualFold(c, "CAP_NET_RAW") })
			}
		}
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		s.Linux.Sysctl["net.ipv4.ping_group_range"] = pingGroupRange
		return nil
	}
}
