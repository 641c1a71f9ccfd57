package network

import (
	"context"
	"fmt"
	"os/exec"
)

// Status is what the host report and /host show of the rentals' network.
type Status struct {
	Subnet     string   `json:"subnet"`
	Bridge     string   `json:"bridge"`
	PluginDirs []string `json:"plugin_dirs"`
	DNS        []string `json:"dns"`
}

// Status describes the network's configuration.
func (n *Network) Status() Status {
	dns := make([]string, len(n.dns))
	for i, d := range n.dns {
		dns[i] = d.String()
	}
	return Status{Subnet: n.cfg.Subnet.String(), Bridge: n.cfg.Bridge, PluginDirs: n.cfg.PluginDirs, DNS: dns}
}

// Check says why rentals cannot be given a network now, for readiness:
// a plugin or tool missing (removed since the start), or the agent's
// rules differing from what the agent wrote (flushed or reordered by an
// operator, a firewall reload or another tool) until Rules.Run repairs them.
func (n *Network) Check(ctx context.Context) error {
	if err := FindPlugins(n.cfg.PluginDirs); err != nil {
		return err
	}
	if err := CheckTools(); err != nil {
		return err
	}
	return n.rules.Check(ctx)
}

// CheckTools says which of the tools the agent's rules are written and
// read with is missing (removed since the start), on either back end.
func CheckTools() error {
	for _, tool := range []string{"nft", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found", tool)
		}
	}
	return nil
}
