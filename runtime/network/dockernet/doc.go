// Package dockernet is the rentals' network on the Docker back end, as far
// as the host's kernel sees it: the agent's iptables rule set around the
// bridge of the rentals' Docker network (its chains, jumped to first from
// DOCKER-USER and INPUT), the check that Docker's chains are there to jump
// from, and what GET /host and /readyz say of it. What talks to dockerd
// (creating the network, publishing ports) stays in runtime/docker, which
// imports it; the rules themselves are kept by network.Rules, as the CNI
// network's are.
package dockernet
