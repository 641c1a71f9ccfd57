package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	gocni "github.com/containerd/go-cni"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// Network is the rentals' network on this host. Its methods are safe for
// concurrent use; CNI operations run one at a time, across processes too.
type Network struct {
	cfg    Config
	cni    gocni.CNI
	dns    []netip.Addr
	search []string

	mu    sync.Mutex // held for every CNI operation and rule change
	rules *Rules
}

// Attachment is an instance's place on the network.
type Attachment struct {
	ID string
	// NetNS is the pinned network namespace the container joins.
	NetNS string
	// IP is the instance's address; Gateway is the bridge's.
	IP      netip.Addr
	Gateway netip.Addr
	// Ports are the published ports, as given to Setup.
	Ports []hostport.Mapping
	// Hostname is the rental's host name, as its hosts and hostname files
	// say.
	Hostname string
	// Files are the generated resolv.conf, hosts and hostname.
	Files Files
}

// New checks the configuration against the host (plugins present, subnet
// free of the host's routes, resolvers known) without changing anything.
// Init then writes the agent's rules.
func New(cfg Config) (*Network, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := FindPlugins(cfg.PluginDirs); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("nft"); err != nil {
		// The bridge plugin's MAC spoof check is written with nft.
		return nil, errors.New("nft not found (install nftables): the bridge's MAC spoof check needs it")
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		return nil, errors.New("iptables-restore not found (install iptables)")
	}
	if err := CheckSubnet(cfg.Subnet, cfg.Bridge); err != nil {
		return nil, err
	}
	n := &Network{cfg: cfg, dns: cfg.DNS}
	var err error
	if len(n.dns) == 0 {
		if n.dns, n.search, err = hostResolvers(cfg.ResolvConf); err != nil {
			return nil, err
		}
	}
	n.rules, err = NewRules(RulesOptions{
		Name:   "cni",
		Set:    n.ruleSet(),
		Bridge: cfg.Bridge,
		Egress: &EgressPolicy{
			Subnet: cfg.Subnet, Blocked: cfg.BlockedEgress, Allowed: cfg.AllowedEgress, DNS: n.dns,
		},
		// Repairs wait for a CNI call in flight: plugins racing on
		// iptables fail.
		Lock:   n.lock,
		Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	conf, err := n.confList()
	if err != nil {
		return nil, err
	}
	n.cni, err = gocni.New(
		gocni.WithPluginDir(cfg.PluginDirs),
		gocni.WithInterfacePrefix("eth"),
		gocni.WithConfListBytes(conf),
		gocni.WithLoNetwork,
	)
	if err != nil {
		return nil, fmt.Errorf("load CNI configuration: %w", err)
	}
	return n, nil
}

// Config is the configuration in effect, defaults filled in.
func (n *Network) Config() Config { return n.cfg }

// DNS are the resolvers rentals are given.
func (n *Network) DNS() []netip.Addr { return n.dns }

// Init creates the bridge (IPv6 off) and writes the agent's iptables chains.
// Run it once at the agent's start, before Sweep; it is idempotent.
func (n *Network) Init(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := WritableProcSysNet(); err != nil {
		return err
	}
	if err := n.ensureBridge(); err != nil {
		return err
	}
	return n.ensureRules(ctx)
}

func (n *Network) confList() ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       n.cfg.NetworkName,
		"plugins": []any{
			map[string]any{
				"type":      "bridge",
				"bridge":    n.cfg.Bridge,
				"isGateway": true,
				// Masquerading is the agent's own rule (see natRules).
				"ipMasq":      false,
				"hairpinMode": false,
				"macspoofchk": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": n.cfg.Subnet.String()}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": n.cfg.IPAMDataDir,
				},
			},
			map[string]any{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
				// snat would set route_localnet=1 on the bridge, opening the
				// host's 127.0.0.1 services to tenants.
				"snat": false,
			},
			map[string]any{
				// Does nothing for a rental without limits.
				"type":         "bandwidth",
				"capabilities": map[string]bool{"bandwidth": true},
			},
		},
	}
	return json.Marshal(conf)
}

// ensureBridge creates the bridge before the plugin does, so that IPv6 is
// off on it before it is up: an IPv6 address would bypass the IPv4 rules.
func (n *Network) ensureBridge() error {
	if _, err := netlink.LinkByName(n.cfg.Bridge); err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("look up bridge %s: %w", n.cfg.Bridge, err)
		}
		if n.cfg.ReadOnlyRules {
			return fmt.Errorf("the agent's bridge %s is missing: start the agent, which creates it", n.cfg.Bridge)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.cfg.Bridge}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge %s: %w", n.cfg.Bridge, err)
		}
	}
	if n.cfg.ReadOnlyRules {
		return nil
	}
	return n.bridgeSysctls()
}

func (n *Network) bridgeSysctls() error {
	for p, v := range map[string]string{
		"/proc/sys/net/ipv6/conf/" + n.cfg.Bridge + "/disable_ipv6":   "1",
		"/proc/sys/net/ipv4/conf/" + n.cfg.Bridge + "/route_localnet": "0",
	} {
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil && !(errors.Is(err, os.ErrNotExist) && strings.Contains(p, "ipv6")) {
			return fmt.Errorf("set %s: %w", p, err)
		}
	}
	return nil
}

// NetNSPath is where id's network namespace is pinned.
func (n *Network) NetNSPath(id string) string {
	return filepath.Join(n.cfg.NetNSDir, n.cfg.NetNSPrefix+id)
}

func checkID(id string) error {
	if id == "" || len(id) > 200 || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
		return fmt.Errorf("instance ID %q cannot name a network namespace: %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// lock serialises CNI operations: in this process with n.mu, across
// processes (a second agent, an operator's tool using the same lock) with
// an flock. Plugins racing on iptables fail with "File exists".
func (n *Network) lock(ctx context.Context) (func(), error) {
	n.mu.Lock()
	if err := os.MkdirAll(filepath.Dir(n.cfg.LockFile), 0o755); err != nil {
		n.mu.Unlock()
		return nil, err
	}
	f, err := os.OpenFile(n.cfg.LockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		n.mu.Unlock()
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		n.mu.Unlock()
		return nil, fmt.Errorf("lock %s: %w", n.cfg.LockFile, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
		n.mu.Unlock()
	}, nil
}

func portMappings(ports []hostport.Mapping) []gocni.PortMapping {
	out := make([]gocni.PortMapping, len(ports))
	for i, p := range ports {
		out[i] = gocni.PortMapping{HostPort: int32(p.HostPort), ContainerPort: int32(p.ContainerPort), Protocol: p.Protocol}
	}
	return out
}
