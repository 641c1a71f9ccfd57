package backend

import (
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/moby/sys/user"
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

// AuthorizedKeysPaths are where a rental's SSH keys appear: root's, and
// the image user's (USER imageUser, looked up in the image's passwd) when
// that is another user with a home of its own. A home under /proc, /sys
// or /dev, or one that is not an absolute path, is not used.
func AuthorizedKeysPaths(imageUser string, passwd io.Reader) []string {
	paths := []string{AuthorizedKeysPath}
	if imageUser == "" {
		return paths
	}
	eu, err := user.GetExecUser(imageUser, &user.ExecUser{Home: "/"}, passwd, nil)
	if err != nil || eu.Uid == 0 || !path.IsAbs(eu.Home) {
		return paths
	}
	home := path.Clean(eu.Home)
	for _, bad := range []string{"/", "/root", "/proc", "/sys", "/dev"} {
		if home == bad || (bad != "/" && strings.HasPrefix(home, bad+"/")) {
			return paths
		}
	}
	return append(paths, path.Join(home, ".ssh", "authorized_keys"))
}
