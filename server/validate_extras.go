package server

import (
	"fmt"
	"sort"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/host-agent/host-agent/runtime"
)

// Bounds of the SSH keys a rental may carry.
const (
	maxSSHKeys     = 100
	maxSSHKeyBytes = 16 << 10
)

// validateUlimits checks each limit's name and value (runtime.ValidateUlimit).
func validateUlimits(limits map[string]int64) error {
	for _, name := range sortedKeys64(limits) {
		if err := runtime.ValidateUlimit(name, limits[name]); err != nil {
			return fieldErr("ulimits."+name, "%v", err)
		}
	}
	return nil
}

// validateSSHKeys accepts public keys in authorized_keys form, one a list
// entry (options such as from="..." included); a private key, two keys in
// one entry or anything sshd would not parse is refused.
func validateSSHKeys(keys []string) error {
	if len(keys) > maxSSHKeys {
		return fieldErr("ssh_authorized_keys", "must list at most %d keys", maxSSHKeys)
	}
	for i, k := range keys {
		field := fmt.Sprintf("ssh_authorized_keys[%d]", i)
		if len(k) > maxSSHKeyBytes {
			return fieldErr(field, "must be at most %d bytes", maxSSHKeyBytes)
		}
		if strings.ContainsAny(k, "\n\r\x00") {
			return fieldErr(field, "must be one key on one line")
		}
		if _, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil || len(rest) > 0 {
			return fieldErr(field, "is not an SSH public key in authorized_keys form")
		}
	}
	return nil
}

func sortedKeys64(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
