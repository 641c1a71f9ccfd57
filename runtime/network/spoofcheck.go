package network

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
)

// The bridge plugin's MAC spoof check is an nft table (bridge nat) with,
// per container, a jump from PREROUTING commented "macspoofchk-<ID>-<if>"
// and two chains named after the ID. Its DEL removes them only while the
// container's namespace exists, so a crash or a reboot leaves them behind.

var spoofcheckRule = regexp.MustCompile(`comment "macspoofchk-(.+)-eth0" # handle (\d+)$`)

func spoofcheckChains(id string) []string {
	return []string{"cni-br-iface-" + id + "-eth0", "cni-br-iface-" + id + "-eth0-mac"}
}

var nftChainLine = regexp.MustCompile(`^chain (\S+) \{`)

// removeSpoofcheck deletes the spoof check's rules and chains for ids,
// from one listing of the table.
func removeSpoofcheck(ctx context.Context, ids map[string]bool) error {
	out, err := exec.CommandContext(ctx, "nft", "-a", "list", "table", "bridge", "nat").Output()
	if err != nil {
		return nil // no spoof check table: nothing to remove
	}
	var script strings.Builder
	chains := map[string]bool{}
	chain := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := nftChainLine.FindStringSubmatch(line); m != nil {
			chain = m[1]
			chains[chain] = true
			continue
		}
		if chain != "PREROUTING" {
			continue
		}
		m := spoofcheckRule.FindStringSubmatch(line)
		if m != nil && ids[m[1]] {
			fmt.Fprintf(&script, "delete rule bridge nat PREROUTING handle %s\n", m[2])
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("nft list table bridge nat: %w", err)
	}
	// The -mac chain is jumped to from the other: flush both, then delete.
	var del []string
	for id := range ids {
		for _, c := range spoofcheckChains(id) {
			if chains[c] {
				fmt.Fprintf(&script, "flush chain bridge nat %s\n", c)
				del = append(del, c)
			}
		}
	}
	for _, c := range del {
		fmt.Fprintf(&script, "delete chain bridge nat %s\n", c)
	}
	if script.Len() == 0 {
		return nil
	}
	cmd := exec.CommandContext(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
