package testenv

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// ServeDNS answers A queries for names on UDP port 53 in the namespace at
// path.
func ServeDNS(t testing.TB, path string, names map[string]string) {
	t.Helper()
	var pc net.PacketConn
	InNetNS(t, path, func() {
		var err error
		if pc, err = net.ListenPacket("udp4", "0.0.0.0:53"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			resp := dnsmessage.Message{Header: dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true}, Questions: []dnsmessage.Question{q}}
			if ip, ok := names[q.Name.String()]; ok && q.Type == dnsmessage.TypeA {
				resp.Answers = []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
					Body:   &dnsmessage.AResource{A: netip.MustParseAddr(ip).As4()},
				}}
			} else if !ok {
				resp.RCode = dnsmessage.RCodeNameError
			}
			if out, err := resp.Pack(); err == nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
}

// LookupIn asks the resolver at server, from the namespace at path, for
// name's IPv4 address, with one UDP query (the namespace's own resolver
// configuration is not read). An answer without an address is an error
// naming its code.
func LookupIn(t testing.TB, path string, server netip.AddrPort, name string) (netip.Addr, error) {
	t.Helper()
	q, err := dnsmessage.NewName(name + ".")
	if err != nil {
		return netip.Addr{}, err
	}
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: 0x4a17, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: q, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	query, err := msg.Pack()
	if err != nil {
		return netip.Addr{}, err
	}
	var c net.Conn
	InNetNS(t, path, func() { c, err = net.DialTimeout("udp4", server.String(), DialTimeout) })
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for range 3 {
		if _, err = c.Write(query); err != nil {
			return netip.Addr{}, err
		}
		_ = c.SetReadDeadline(time.Now().Add(DialTimeout))
		var n int
		if n, err = c.Read(buf); err != nil {
			continue
		}
		var resp dnsmessage.Message
		if err := resp.Unpack(buf[:n]); err != nil {
			return netip.Addr{}, err
		}
		for _, a := range resp.Answers {
			if r, ok := a.Body.(*dnsmessage.AResource); ok {
				return netip.AddrFrom4(r.A), nil
			}
		}
		return netip.Addr{}, fmt.Errorf("%s answered %s for %s with no address", server, resp.RCode, name)
	}
	return netip.Addr{}, err
}
