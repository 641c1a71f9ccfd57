package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The record the agent writes reads back, through loadConfig, to the
// agent's own rental settings, defaults included; it holds no token and
// only its owner may read it.
func TestAgentRecordReadsBackToTheAgentsSettings(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	agentEnv := map[string]string{
		"AGENT_ID": "host-1", "AGENT_TOKEN": "a-secret-token-0123456789", "STATE_DIR": state, "RUNTIME": "containerd",
		"RENTAL_NETWORK_NAME": "two", "RENTAL_SUBNET": "192.168.213.0/24", "HOST_PORT_RANGE": "41000-41099",
		"BLOCKED_EGRESS_CIDRS": "10.0.0.0/8,203.0.113.0/24", "ALLOWED_EGRESS_CIDRS": "10.1.2.0/24",
		"RENTAL_DNS": "198.51.100.53,198.51.100.54", "PUBLIC_IP": "198.51.100.7", "CDI_SPEC_DIRS": "/etc/cdi:/run/cdi",
		"DISK_RESERVE_GB": "7", "SNAPSHOTTER": "stargz",
	}
	cfg, err := loadConfig(mapLookup(agentEnv), filepath.Join(t.TempDir(), ".env"))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeAgentRecord(cfg); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(state, agentConfigFile)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), agentEnv["AGENT_TOKEN"]) {
		t.Fatalf("the record holds the agent's token:\n%s", b)
	}

	// A shell with only STATE_DIR and a stale blocked list.
	lookup, source, owned, err := selftestLookup(mapLookup(map[string]string{"STATE_DIR": state, "BLOCKED_EGRESS_CIDRS": "10.0.0.0/8"}), filepath.Join(t.TempDir(), ".env"))
	if err != nil || !owned {
		t.Fatalf("selftestLookup: owned %v, %v", owned, err)
	}
	if !strings.Contains(source, path) || !strings.Contains(source, "BLOCKED_EGRESS_CIDRS ignored") {
		t.Errorf("source %q, want the record named and the shell's BLOCKED_EGRESS_CIDRS ignored", source)
	}
	got, err := selftestConfig(lookup)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got.Network) != fmt.Sprint(cfg.Network) {
		t.Errorf("network read back as %+v, want %+v", got.Network, cfg.Network)
	}
	for _, f := range []struct{ name, got, want string }{
		{"RUNTIME", got.Runtime, cfg.Runtime},
		{"CONTAINERD_ADDRESS", got.ContainerdAddress, cfg.ContainerdAddress},
		{"CONTAINERD_NAMESPACE", got.ContainerdNamespace, cfg.ContainerdNamespace},
		{"CDI_SPEC_DIRS", fmt.Sprint(got.CDISpecDirs), fmt.Sprint(cfg.CDISpecDirs)},
		{"DISK_RESERVE_GB", fmt.Sprint(got.DiskReserveGB), fmt.Sprint(cfg.DiskReserveGB)},
		{"STATE_DIR", got.StateDir, cfg.StateDir},
		{"SNAPSHOTTER", got.Pull.Snapshotter, "stargz"},
	} {
		if f.got != f.want {
			t.Errorf("%s read back as %q, want %q", f.name, f.got, f.want)
		}
	}

	// Without a record, the environment it is.
	_, source, owned, err = selftestLookup(mapLookup(map[string]string{"STATE_DIR": t.TempDir()}), filepath.Join(t.TempDir(), ".env"))
	if err != nil || owned || !strings.HasPrefix(source, "the environment") {
		t.Errorf("without a record: source %q, owned %v, %v", source, owned, err)
	}
	// A record that cannot be read names STATE_DIR.
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, agentConfigFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := selftestLookup(mapLookup(map[string]string{"STATE_DIR": bad}), filepath.Join(t.TempDir(), ".env")); err == nil || !strings.Contains(err.Error(), "STATE_DIR") {
		t.Errorf("a broken record: %v, want an error naming STATE_DIR", err)
	}
}
