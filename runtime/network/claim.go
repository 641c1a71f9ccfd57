package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// DefaultClaimDir is where each agent on the host records the host ports
// it hands out, next to the CNI lock that the agents share.
const DefaultClaimDir = "/run/host-agent/networks"

// Errors of ClaimPortRange that stop an agent's start; others (a claim
// directory that cannot be written) do not.
var (
	ErrPortRangeOverlap = errors.New("port range taken by another agent")
	ErrNetworkInUse     = errors.New("network taken by another agent")
)

// claim is what one agent records: its network and its port range.
type claim struct {
	Network   string `json:"network"`
	PortRange string `json:"host_port_range"`
	PID       int    `json:"pid"`
}

// ClaimPortRange records that the agent of network hands out host ports
// from r, and refuses when a running agent of another network on the host
// hands out ports from a range overlapping r: neither could see the ports
// the other publishes, and both would hand out the same. The claim is a
// file in dir, locked for as long as the agent runs (release unlocks and
// removes it); a claim whose agent is gone (its lock released, a crash
// included) is ignored and removed.
func ClaimPortRange(dir, network string, r hostport.Range) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// One at a time, so that two agents starting together see each other.
	guard, err := lockFile(filepath.Join(dir, ".lock"), unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlockFile(guard)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	own := filepath.Join(dir, network+".json")
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if p == own || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		c, live, err := readClaim(p)
		if err == nil && !live {
			// Its agent is gone (a crash, a kill): no one else takes
			// the guard's lock without holding its own claim's, so the
			// file is stale.
			_ = os.Remove(p)
			continue
		}
		if err != nil || c.Network == network {
			continue
		}
		other, err := hostport.ParseRange(c.PortRange)
		if err != nil {
			continue
		}
		if other.First <= r.Last && r.First <= other.Last {
			return nil, fmt.Errorf("%s overlaps %s, the range of the agent of network %s on this host (pid %d): give each agent a range of its own: %w",
				r, other, c.Network, c.PID, ErrPortRangeOverlap)
		}
	}
	f, err := os.OpenFile(own, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another agent of network %s runs on this host (%s is locked): %w", network, own, ErrNetworkInUse)
	}
	b, _ := json.Marshal(claim{Network: network, PortRange: r.String(), PID: os.Getpid()})
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt(b, 0)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		_ = os.Remove(own)
		f.Close()
	}, nil
}

// readClaim reads a claim and whether its agent still holds it.
func readClaim(path string) (claim, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return claim{}, false, err
	}
	defer f.Close()
	var c claim
	if err := json.NewDecoder(f).Decode(&c); err != nil {
		return claim{}, false, err
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	if err == nil {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return c, false, nil
	}
	if errors.Is(err, unix.EWOULDBLOCK) {
		return c, true, nil
	}
	return c, false, err
}

func lockFile(path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

func unlockFile(f *os.File) {
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	f.Close()
}
