package runtime

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AuthorizedKeysPath is where a rental's SSH keys appear, read-only.
const AuthorizedKeysPath = "/root/.ssh/authorized_keys"

// WriteAuthorizedKeys writes keys, one a line, as dir/authorized_keys
// (mode 0644, which sshd's StrictModes accepts for root's keys) and
// returns its path, for a back end to mount read-only at
// AuthorizedKeysPath.
func WriteAuthorizedKeys(dir string, keys []string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("SSH keys: %w", err)
	}
	path := filepath.Join(dir, "authorized_keys")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(keys, "\n")+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("SSH keys: %w", err)
	}
	// WriteFile keeps an existing file's mode; the mount checks want
	// exactly this one.
	if err := os.Chmod(tmp, 0o644); err != nil {
		return "", fmt.Errorf("SSH keys: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("SSH keys: %w", err)
	}
	return path, nil
}
