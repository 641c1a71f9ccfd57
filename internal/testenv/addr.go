package testenv

import (
	"net"
	"testing"

	"github.com/host-agent/host-agent/runtime/hostport"
)

// AgentAddr is a free loopback address for an agent under test to listen
// on. It lies outside the default HOST_PORT_RANGE: the kernel's ephemeral
// ports overlap that range, and the agent refuses to listen inside the range
// it publishes rentals' ports from.
func AgentAddr(tb testing.TB) string {
	tb.Helper()
	for i := 0; i < 100; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		addr := ln.Addr().(*net.TCPAddr)
		ln.Close()
		if !hostport.DefaultRange.Contains(uint16(addr.Port)) {
			return addr.String()
		}
	}
	tb.Fatal("no free loopback port outside the default host-port range")
	return ""
}
