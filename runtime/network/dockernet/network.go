package dockernet

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/host-agent/host-agent/runtime/network"
)

// Network is the rentals' Docker network as the host sees it: its rules,
// kept by their owner, and what the host report and readiness say of it.
type Network struct {
	cfg   Config
	rules *network.Rules
}

// New checks c and makes the owner of its rules; it writes nothing.
func New(c Config, logger *slog.Logger) (*Network, error) {
	if problems := c.Problems(); len(problems) > 0 {
		return nil, fmt.Errorf("%s: %w", strings.Join(problems, "; "), errdefs.ErrInvalidArgument)
	}
	c.Subnet = c.Subnet.Masked()
	rules, err := NewRules(c, logger)
	if err != nil {
		return nil, err
	}
	return &Network{cfg: c, rules: rules}, nil
}

// Config is the network's configuration.
func (n *Network) Config() Config { return n.cfg }

// Rules is the owner of the network's iptables rules: run its Run loop for
// as long as the agent serves.
func (n *Network) Rules() *network.Rules { return n.rules }

// Status describes the network for the host report, as the CNI network's
// Status does: rentals resolve names through Docker's embedded resolver.
func (n *Network) Status() network.Status {
	return network.Status{Subnet: n.cfg.Subnet.String(), Bridge: n.cfg.Bridge, DNS: []string{EmbeddedDNS}}
}

// Check says why rentals on Docker cannot be given their network now, for
// readiness, as the CNI network's Check does: a tool missing, Docker's
// DOCKER-USER chain gone (a dockerd restarted with --iptables=false), or
// the agent's rules differing from what the agent wrote until Rules.Run
// repairs them.
func (n *Network) Check(ctx context.Context) error {
	if err := network.CheckTools(); err != nil {
		return err
	}
	if err := IsolationAvailable(); err != nil {
		return err
	}
	return n.rules.Check(ctx)
}
