package testenv

import (
	"io"
	"net"
	"testing"
	"time"
)

// Received is what a Sink read from one connection: its bytes, and when
// the first and the last of them arrived.
type Received struct {
	Bytes       int64
	First, Last time.Time
}

// Mbps is the rate of the connection's bytes between the first and the
// last, in Mbit/s.
func (r Received) Mbps() float64 {
	d := r.Last.Sub(r.First).Seconds()
	if d <= 0 {
		return 0
	}
	return float64(r.Bytes) * 8 / d / 1e6
}

// SinkIn runs a TCP server in namespace path (the host's when empty) on
// addr that reads each connection to its end and sends what it read on the
// channel returned, with the port.
func SinkIn(t testing.TB, path, addr string) (int, <-chan Received) {
	t.Helper()
	l := listenIn(t, path, addr)
	out := make(chan Received, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var r Received
				buf := make([]byte, 256<<10)
				for {
					_ = c.SetReadDeadline(time.Now().Add(time.Minute))
					n, err := c.Read(buf)
					if n > 0 {
						now := time.Now()
						if r.Bytes == 0 {
							r.First = now
						}
						r.Bytes += int64(n)
						r.Last = now
					}
					if err != nil {
						if err != io.EOF {
							r.Bytes = -r.Bytes - 1 // cut short: never a valid count
						}
						break
					}
				}
				select {
				case out <- r:
				default:
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port, out
}

// SourceIn runs a TCP server in namespace path (the host's when empty) on
// addr that writes to each connection as fast as it can until the
// connection ends. It returns the port.
func SourceIn(t testing.TB, path, addr string) int {
	t.Helper()
	l := listenIn(t, path, addr)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 256<<10)
				for {
					_ = c.SetWriteDeadline(time.Now().Add(time.Minute))
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}
