package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// agentConfigFile, in STATE_DIR, is the running agent's configuration as
// the self-test needs it: `host-agent selftest` run from a shell would
// otherwise take the shell's environment for the agent's, and rewrite the
// agent's rules from it.
const agentConfigFile = "agent-config.json"

// agentRecord is what agentConfigFile holds: the settings that shape the
// rentals (runtime, network, devices, disk), by their variable's name, as
// the agent resolved them (defaults filled in, RUNTIME=auto decided). No
// token or other secret is written.
type agentRecord struct {
	WrittenAt time.Time         `json:"written_at"`
	PID       int               `json:"pid"`
	Env       map[string]string `json:"env"`
}

// writeAgentRecord writes cfg's record into its STATE_DIR (mode 0600),
// replacing the file whole.
func writeAgentRecord(cfg config) error {
	rec := agentRecord{WrittenAt: time.Now().UTC(), PID: os.Getpid(), Env: recordedEnv(cfg)}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(cfg.StateDir, agentConfigFile+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(cfg.StateDir, agentConfigFile))
}

// recordedEnv renders cfg's rental settings as the variables that give
// them, so that loadConfig reads them back to the same configuration.
func recordedEnv(cfg config) map[string]string {
	n := cfg.Network
	return map[string]string{
		"AGENT_ID":             cfg.AgentID,
		"LISTEN_ADDR":          cfg.ListenAddr,
		"RUNTIME":              cfg.Runtime,
		"CONTAINERD_ADDRESS":   cfg.ContainerdAddress,
		"CONTAINERD_NAMESPACE": cfg.ContainerdNamespace,
		"CONTAINERD_ROOT":      cfg.ContainerdRoot,
		"DOCKER_HOST":          cfg.DockerHost,
		"CDI_SPEC_DIRS":        strings.Join(cfg.CDISpecDirs, string(filepath.ListSeparator)),
		"STATE_DIR":            cfg.StateDir,
		"DISK_RESERVE_GB":      strconv.FormatUint(cfg.DiskReserveGB, 10),
		"RENTAL_DISK_GB":       strconv.FormatUint(cfg.Disk.RentalGB, 10),
		"DISK_WATCH_INTERVAL":  cfg.Disk.WatchInterval.String(),
		"SNAPSHOTTER":          cfg.Pull.Snapshotter,
		"RENTAL_NETWORK_NAME":  n.Name,
		"RENTAL_SUBNET":        n.RentalSubnet.String(),
		"HOST_PORT_RANGE":      n.HostPortRange.String(),
		"BLOCKED_EGRESS_CIDRS": joinStrings(n.BlockedEgress, ","),
		"ALLOWED_EGRESS_CIDRS": joinStrings(n.AllowedEgress, ","),
		"CNI_PLUGIN_DIRS":      strings.Join(n.CNIPluginDirs, string(filepath.ListSeparator)),
		"PUBLIC_IP":            addrString(n.PublicIP),
		"RENTAL_DNS":           joinStrings(n.RentalDNS, ","),
	}
}

func joinStrings[T fmt.Stringer](xs []T, sep string) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, sep)
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// readAgentRecord reads the record in stateDir; ok is false when there is
// none.
func readAgentRecord(stateDir string) (rec agentRecord, path string, ok bool, err error) {
	path = filepath.Join(stateDir, agentConfigFile)
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return rec, path, false, nil
	}
	if err != nil {
		return rec, path, false, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, path, false, fmt.Errorf("%s: %w", path, err)
	}
	return rec, path, true, nil
}
