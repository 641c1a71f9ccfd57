package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"

	"golang.org/x/sys/unix"
)

// DialFrom connects over TCP to addr from inside the network namespace
// pinned at nsPath, as a process of the rental there would: the socket is
// made in that namespace, so the host's rules for the rental's traffic
// apply to it. An empty nsPath dials from the caller's namespace.
func DialFrom(ctx context.Context, nsPath string, addr netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	if nsPath == "" {
		return d.DialContext(ctx, "tcp4", addr.String())
	}
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The thread is never unlocked: it dies with the goroutine, and
		// with it the changed namespace, instead of returning to Go's pool.
		goruntime.LockOSThread()
		f, err := os.Open(nsPath)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("enter netns %s: %w", nsPath, err)}
			return
		}
		c, err := d.DialContext(ctx, "tcp4", addr.String())
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}
