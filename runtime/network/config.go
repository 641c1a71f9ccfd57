// Package network gives each rental a network namespace on one agent-owned
// CNI bridge, publishes its ports through CNI's portmap plugin, and walls
// tenants off from each other, from the host and from the provider's LAN
// with the agent's own iptables chains. It also writes the rental's
// resolv.conf, hosts and hostname files. Rules owns iptables rule sets,
// this network's and the Docker back end's (subpackage dockernet, which
// makes the Docker network's): it keeps them as written, repairing what a
// flush, a firewall reload or another tool changes. Every name of the
// rentals' network, on both back ends, comes from Config.Named.
//
// The lifecycle layer imports it: Setup after an instance's ports are
// reserved and recorded, Teardown before they are released, Sweep when the
// agent starts. The back ends, the self-test and the agent's wiring (for
// GET /host and /readyz) import it too. It does not import the runtime
// package: the label keys of what a rental's network holds (ports, netns,
// IP) are the runtime package's.
package network

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Defaults for Config. The subnet sits in a part of 10/8 that home routers,
// cloud VPCs (10.0/16 and up), Docker (172.17/16) and podman or nerdctl
// (10.88/16, 10.4/16) leave alone.
var (
	DefaultSubnet        = netip.MustParsePrefix("10.213.0.0/16")
	DefaultPluginDirs    = []string{"/opt/cni/bin", "/usr/lib/cni"}
	DefaultBlockedEgress = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("168.63.129.16/32"),
		netip.MustParsePrefix("224.0.0.0/4"),
	}
)

const (
	DefaultNetworkName = "host-agent"
	DefaultBridge      = "hostagent0"
	DefaultChainPrefix = "HOSTAGENT"
	DefaultNetNSDir    = "/var/run/netns"
	DefaultNetNSPrefix = "host-agent-"
	DefaultIPAMDataDir = "/var/lib/cni/networks"
	DefaultLockFile    = "/run/host-agent/cni.lock"
)

// DefaultDockerBridge is the bridge of the rentals' Docker network, on the
// Docker back end: apart from the CNI network's, so that an agent moving
// between back ends finds each where it left it.
const DefaultDockerBridge = "hadocker0"

// Config says how the rentals' network is built. Zero fields take the
// defaults above; StateDir is required.
type Config struct {
	// Subnet is the rentals' bridge network (RENTAL_SUBNET), IPv4 only.
	Subnet netip.Prefix
	// NetworkName names the CNI network; host-local keeps its leases under
	// IPAMDataDir/NetworkName, and portmap names its rules after it.
	NetworkName string
	// Bridge is the bridge device's name (at most 15 bytes).
	Bridge string
	// DockerBridge is the bridge of the rentals' Docker network, which the
	// Docker back end uses instead of this one (runtime/network/dockernet);
	// named here so that every name of the rentals' network comes from one
	// place (Named).
	DockerBridge string
	// ChainPrefix starts the names of the agent's iptables chains.
	ChainPrefix string
	// PluginDirs are searched for the CNI plugins (CNI_PLUGIN_DIRS).
	PluginDirs []string
	// NetNSDir and NetNSPrefix place the instances' pinned network
	// namespaces: NetNSDir/NetNSPrefix<instance ID>.
	NetNSDir    string
	NetNSPrefix string
	// IPAMDataDir is host-local's data directory.
	IPAMDataDir string
	// StateDir holds the attachment journal and the generated
	// resolv.conf, hosts and hostname files.
	StateDir string
	// LockFile serialises CNI operations across processes.
	LockFile string
	// BlockedEgress are destinations tenants may not reach
	// (BLOCKED_EGRESS_CIDRS); AllowedEgress are exceptions to them
	// (ALLOWED_EGRESS_CIDRS). BlockedEgress nil means the defaults; empty
	// and non-nil blocks nothing.
	BlockedEgress []netip.Prefix
	AllowedEgress []netip.Prefix
	// DNS are the resolvers rentals use (RENTAL_DNS); empty means the host's
	// upstream resolvers. They stay reachable on port 53 even in a blocked
	// range.
	DNS []netip.Addr
	// ResolvConf is the host's resolv.conf, read when DNS is empty.
	ResolvConf string
	// Logger receives what cleanup could not do.
	Logger *slog.Logger
	// ReadOnlyRules says the bridge and the chains belong to an agent that
	// runs already (the self-test beside it): Init and Setup never write
	// the chains, move the jumps to them or create the bridge; they check
	// them instead (CheckRules) and fail when they are not as configured.
	ReadOnlyRules bool
}

var chainPrefixRE = regexp.MustCompile(`^[A-Z][A-Z0-9_-]{0,15}$`)

// ValidChainPrefix says whether p may start the names of the agent's
// chains (on either back end): upper-case letters, digits, '_' and '-',
// at most 16, so that every chain name stays within iptables' limit.
func ValidChainPrefix(p string) bool { return chainPrefixRE.MatchString(p) }

func (c *Config) setDefaults() error {
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	c.Subnet = c.Subnet.Masked()
	if c.NetworkName == "" {
		c.NetworkName = DefaultNetworkName
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.DockerBridge == "" {
		c.DockerBridge = DefaultDockerBridge
	}
	if c.ChainPrefix == "" {
		c.ChainPrefix = DefaultChainPrefix
	}
	if len(c.PluginDirs) == 0 {
		c.PluginDirs = DefaultPluginDirs
	}
	if c.NetNSDir == "" {
		c.NetNSDir = DefaultNetNSDir
	}
	if c.NetNSPrefix == "" {
		c.NetNSPrefix = DefaultNetNSPrefix
	}
	if c.IPAMDataDir == "" {
		c.IPAMDataDir = DefaultIPAMDataDir
	}
	if c.LockFile == "" {
		c.LockFile = DefaultLockFile
	}
	if c.BlockedEgress == nil {
		c.BlockedEgress = DefaultBlockedEgress
	}
	if c.ResolvConf == "" {
		c.ResolvConf = "/etc/resolv.conf"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if !c.Subnet.Addr().Is4() {
		errs = append(errs, fmt.Errorf("subnet %s: must be IPv4", c.Subnet))
	} else if c.Subnet.Bits() > 29 || c.Subnet.Bits() < 8 {
		errs = append(errs, fmt.Errorf("subnet %s: prefix length must be between /8 and /29", c.Subnet))
	}
	for _, br := range []string{c.Bridge, c.DockerBridge} {
		if len(br) > 15 || strings.ContainsAny(br, "/ \t\n") {
			errs = append(errs, fmt.Errorf("bridge name %q: at most 15 bytes, no slashes or spaces", br))
		}
	}
	if !ValidChainPrefix(c.ChainPrefix) {
		errs = append(errs, fmt.Errorf("chain prefix %q: upper-case letters, digits, '_' and '-', at most 16", c.ChainPrefix))
	}
	for _, p := range slices.Concat(c.BlockedEgress, c.AllowedEgress) {
		if !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("egress CIDR %s: must be IPv4", p))
		}
	}
	for _, a := range c.DNS {
		if !a.Is4() {
			errs = append(errs, fmt.Errorf("DNS server %s: must be IPv4", a))
		}
	}
	for name, dir := range map[string]string{"state directory": c.StateDir, "netns directory": c.NetNSDir, "IPAM data directory": c.IPAMDataDir, "lock file": c.LockFile} {
		if !filepath.IsAbs(dir) {
			errs = append(errs, fmt.Errorf("%s %q: must be an absolute path", name, dir))
		}
	}
	return errors.Join(errs...)
}

// ParseCIDRs reads a comma-separated list of IPv4 CIDRs (a bare address is
// a /32). An empty string is an empty, non-nil list.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	out := []netip.Prefix{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		var p netip.Prefix
		var err error
		if strings.Contains(f, "/") {
			p, err = netip.ParsePrefix(f)
		} else {
			var a netip.Addr
			a, err = netip.ParseAddr(f)
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if err != nil || !p.Addr().Is4() {
			return nil, fmt.Errorf("%q is not an IPv4 CIDR", f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ParseAddrs reads a comma-separated list of IPv4 addresses.
func ParseAddrs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("%q is not an IPv4 address", f)
		}
		out = append(out, a)
	}
	return out, nil
}

// FindPlugins returns the directory of each plugin the network needs, or an
// error naming the missing ones and where they were looked for.
func FindPlugins(dirs []string) error {
	var missing []string
	for _, p := range requiredPlugins {
		found := false
		for _, d := range dirs {
			if fi, err := os.Stat(filepath.Join(d, p)); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("CNI plugins %s not found in %s (install containernetworking-plugins)",
			strings.Join(missing, ", "), strings.Join(dirs, ":"))
	}
	return nil
}

var requiredPlugins = []string{"bridge", "host-local", "portmap", "loopback", "bandwidth"}
