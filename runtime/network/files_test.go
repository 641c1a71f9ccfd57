package network

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A host that resolves through a local stub (systemd-resolved's
// 127.0.0.53) gives rentals no server they could reach: the loopback
// servers are skipped, and with none left the error says to set RENTAL_DNS.
func TestHostResolvers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	servers, search, err := hostResolvers(write("mixed", "# x\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\nnameserver 2001:db8::1\nsearch a.example b.example\noptions edns0\n"))
	if err != nil || !slices.Equal(servers, []netip.Addr{netip.MustParseAddr("10.255.255.53")}) || !slices.Equal(search, []string{"a.example", "b.example"}) {
		t.Fatalf("hostResolvers = %v %v %v", servers, search, err)
	}
	if _, err := os.Stat(systemdResolvConf); err == nil {
		t.Skip("this host runs systemd-resolved: the stub case reads its real upstream list")
	}
	if _, _, err := hostResolvers(write("stub", "nameserver 127.0.0.53\noptions edns0 trust-ad\n")); err == nil || !strings.Contains(err.Error(), "RENTAL_DNS") {
		t.Fatalf("stub only: %v, want an error naming RENTAL_DNS", err)
	}
}

func TestWriteFilesAndMounts(t *testing.T) {
	t.Parallel()
	n := &Network{cfg: Config{StateDir: t.TempDir()}, dns: []netip.Addr{netip.MustParseAddr("9.9.9.9")}, search: []string{"corp.example"}}
	f, err := n.writeFiles("web-1", "web-1", netip.MustParseAddr("10.213.0.7"))
	if err != nil {
		t.Fatal(err)
	}
	resolv, _ := os.ReadFile(f.ResolvConf)
	if !strings.Contains(string(resolv), "nameserver 9.9.9.9\n") || !strings.Contains(string(resolv), "search corp.example\n") || strings.Contains(string(resolv), "127.0.0") {
		t.Fatalf("resolv.conf:\n%s", resolv)
	}
	hosts, _ := os.ReadFile(f.Hosts)
	if !strings.Contains(string(hosts), "127.0.0.1\tlocalhost\n") || !strings.Contains(string(hosts), "10.213.0.7\tweb-1\n") {
		t.Fatalf("hosts:\n%s", hosts)
	}
	for _, m := range f.Mounts() {
		if m.Type != "bind" || !slices.Contains(m.Options, "ro") || !slices.Contains(m.Options, "nosuid") || !filepath.IsAbs(m.Source) {
			t.Errorf("mount %+v is not a read-only bind of a generated file", m)
		}
	}
	if err := n.removeFiles("web-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(f.Hosts)); !os.IsNotExist(err) {
		t.Fatalf("files left after removeFiles: %v", err)
	}
}

// The plugin configuration relies on: the bridge's own masquerade off (the
// agent's rule does it, and leaves nothing per container), portmap's snat
// off (route_localnet), the MAC spoof check on, leases under the
// configured directory.
func TestConfList(t *testing.T) {
	t.Parallel()
	n := &Network{cfg: Config{NetworkName: "net", Bridge: "br", Subnet: netip.MustParsePrefix("10.213.0.0/16"), IPAMDataDir: "/x/ipam"}}
	b, err := n.confList()
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Name    string
		Plugins []map[string]any
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.Name != "net" || len(c.Plugins) != 3 {
		t.Fatalf("conflist %s", b)
	}
	br, pm := c.Plugins[0], c.Plugins[1]
	if br["type"] != "bridge" || br["ipMasq"] != false || br["macspoofchk"] != true || br["isGateway"] != true {
		t.Errorf("bridge plugin: %v", br)
	}
	if ipam := br["ipam"].(map[string]any); ipam["dataDir"] != "/x/ipam" || ipam["type"] != "host-local" {
		t.Errorf("ipam: %v", ipam)
	}
	if pm["type"] != "portmap" || pm["snat"] != false {
		t.Errorf("portmap plugin: %v", pm)
	}
	if bw := c.Plugins[2]; bw["type"] != "bandwidth" || bw["capabilities"].(map[string]any)["bandwidth"] != true {
		t.Errorf("bandwidth plugin: %v", bw)
	}
}
