package hostport

import (
	"fmt"
	"strconv"
	"strings"
)

// Format spells mappings for a container label, in order:
// "tcp/22:40017,udp/8888:40018".
func Format(mappings []Mapping) string {
	parts := make([]string, len(mappings))
	for i, m := range mappings {
		parts[i] = fmt.Sprintf("%s/%d:%d", m.Protocol, m.ContainerPort, m.HostPort)
	}
	return strings.Join(parts, ",")
}

// Parse reads what Format wrote.
func Parse(s string) ([]Mapping, error) {
	if s == "" {
		return nil, nil
	}
	var out []Mapping
	for _, part := range strings.Split(s, ",") {
		proto, rest, ok1 := strings.Cut(part, "/")
		cport, hport, ok2 := strings.Cut(rest, ":")
		c, err1 := strconv.ParseUint(cport, 10, 16)
		h, err2 := strconv.ParseUint(hport, 10, 16)
		if !ok1 || !ok2 || err1 != nil || err2 != nil || c == 0 || h == 0 || (proto != TCP && proto != UDP) {
			return nil, fmt.Errorf("port mapping %q: want PROTOCOL/CONTAINER_PORT:HOST_PORT", part)
		}
		out = append(out, Mapping{ContainerPort: uint16(c), Protocol: proto, HostPort: uint16(h)})
	}
	return out, nil
}

// Env is what a tenant finds in the container's environment about its
// published ports: HOST_PORT_TCP_22=40017 for each mapping, and PUBLIC_IP
// when the host's public address is known.
func Env(mappings []Mapping, publicIP string) []string {
	var env []string
	for _, m := range mappings {
		env = append(env, fmt.Sprintf("HOST_PORT_%s_%d=%d", strings.ToUpper(m.Protocol), m.ContainerPort, m.HostPort))
	}
	if publicIP != "" {
		env = append(env, "PUBLIC_IP="+publicIP)
	}
	return env
}
