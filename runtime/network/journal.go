package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// journalEntry is written before CNI ADD and removed after teardown, so
// that a crash in between leaves what DEL needs (the ports portmap's DEL
// must be given again) for Sweep, even when no container records it.
type journalEntry struct {
	ID    string             `json:"id"`
	NetNS string             `json:"netns"`
	Ports []hostport.Mapping `json:"ports,omitempty"`
}

func (n *Network) journalDir() string { return filepath.Join(n.cfg.StateDir, "attachments") }

func (n *Network) journalPath(id string) string {
	return filepath.Join(n.journalDir(), id+".json")
}

func (n *Network) writeJournal(e journalEntry) error {
	if err := os.MkdirAll(n.journalDir(), 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	tmp := n.journalPath(e.ID) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	f.Close()
	return os.Rename(tmp, n.journalPath(e.ID))
}

func (n *Network) readJournal(id string) (journalEntry, bool, error) {
	b, err := os.ReadFile(n.journalPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return journalEntry{}, false, nil
	}
	if err != nil {
		return journalEntry{}, false, err
	}
	var e journalEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return journalEntry{}, false, fmt.Errorf("journal %s: %w", n.journalPath(id), err)
	}
	return e, true, nil
}

func (n *Network) removeJournal(id string) error {
	if err := os.Remove(n.journalPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (n *Network) journalIDs() ([]string, error) {
	ents, err := os.ReadDir(n.journalDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Attached lists the instances whose network is set up (or whose setup or
// teardown was cut short), as the journal records them.
func (n *Network) Attached() ([]string, error) { return n.journalIDs() }
