package network

import (
	"context"
	"errors"
	"fmt"
	"os/exec"

	"github.com/coreos/go-iptables/iptables"
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
// chains or the jumps to them gone (flushed by an operator or a firewall
// reload). Init or the next Setup writes the rules again.
func (n *Network) Check(ctx context.Context) error {
	if err := FindPlugins(n.cfg.PluginDirs); err != nil {
		return err
	}
	for _, tool := range []string{"nft", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found", tool)
		}
	}
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(5))
	if err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	var errs []error
	for _, j := range []struct{ table, chain, target string }{
		{"filter", "FORWARD", n.forwardChain()},
		{"filter", "INPUT", n.inputChain()},
		{"nat", "POSTROUTING", n.postroutingChain()},
	} {
		ok, err := ipt.Exists(j.table, j.chain, "-j", j.target)
		if err != nil || !ok {
			errs = append(errs, fmt.Errorf("the jump from %s %s to %s is missing", j.table, j.chain, j.target))
		}
	}
	return errors.Join(errs...)
}
