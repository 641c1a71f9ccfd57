// Command payload is the program inside the test image. Its arguments are a
// small script run in order, so that one image serves every test:
//
//	echo TEXT      print TEXT
//	env            print the environment, one variable a line
//	ls DIR         print the names in DIR
//	cat FILE       print FILE
//	statfs DIR     print the size in bytes of the file system holding DIR
//	spam BYTES     print numbered lines until about BYTES bytes are out
//	sleep SECONDS  sleep (inf: forever); SIGTERM ends it with code 143
//	ignore-term    ignore SIGTERM from now on
//	exit CODE      exit with CODE
//	alloc MIB      allocate and touch MIB MiB of memory, holding it
//	forkbomb       start copies of itself that do the same, forever
//	write FILE     try to write FILE, printing "write FILE: ok" or the error
//	serve PORT     answer each TCP connection and UDP datagram on PORT, in
//	               the background, with HOST_PORT_TCP_PORT and
//	               HOST_PORT_UDP_PORT from the environment and the client's
//	               address
//	dial PROTO ADDR  connect to ADDR (tcp or udp, sending a datagram) and
//	               print "dial ADDR: " and the first line answered, or
//	               "dial ADDR: error: ..." after 3 seconds at most
//	lookup NAME    resolve NAME through /etc/resolv.conf and print
//	               "lookup NAME: ADDRS" or "lookup NAME: error: ..."
//	send ADDR BYTES  connect to ADDR over TCP, write BYTES bytes and close,
//	               printing "send ADDR: N bytes" or "send ADDR: error: ..."
//	blast ADDR SECONDS  connect to ADDR over TCP and write as fast as it
//	               can for SECONDS, then close, printing "blast ADDR: N
//	               bytes" or "blast ADDR: error: ..."
//	recv ADDR SECONDS  connect to ADDR over TCP and read for SECONDS,
//	               printing "recv ADDR: N bytes in MS ms" (from the first
//	               byte to the last) or "recv ADDR: error: ..."
//	spin           keep one CPU busy, in the background
//
// Without arguments it sleeps forever.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		args = []string{"sleep", "inf"}
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	ignoreTerm := false
	for i := 0; i < len(args); i++ {
		arg := func() string {
			i++
			if i >= len(args) {
				fmt.Fprintf(os.Stderr, "payload: %s needs an argument\n", args[i-1])
				os.Exit(64)
			}
			return args[i]
		}
		switch cmd := args[i]; cmd {
		case "echo":
			fmt.Println(arg())
		case "env":
			env := os.Environ()
			sort.Strings(env)
			for _, e := range env {
				fmt.Println(e)
			}
		case "ls":
			entries, err := os.ReadDir(arg())
			if err != nil {
				fmt.Fprintln(os.Stderr, "payload:", err)
				os.Exit(66)
			}
			for _, e := range entries {
				fmt.Println(e.Name())
			}
		case "cat":
			b, err := os.ReadFile(arg())
			if err != nil {
				fmt.Fprintln(os.Stderr, "payload:", err)
				os.Exit(66)
			}
			os.Stdout.Write(b)
		case "statfs":
			var st syscall.Statfs_t
			if err := syscall.Statfs(arg(), &st); err != nil {
				fmt.Fprintln(os.Stderr, "payload:", err)
				os.Exit(66)
			}
			fmt.Println(st.Blocks * uint64(st.Bsize))
		case "spam":
			n, err := strconv.ParseInt(arg(), 10, 64)
			if err != nil {
				os.Exit(64)
			}
			w := bufio.NewWriter(os.Stdout)
			for i, out := 0, int64(0); out < n; i++ {
				k, _ := fmt.Fprintf(w, "spam %08d ................................................\n", i)
				out += int64(k)
			}
			w.Flush()
		case "ignore-term":
			ignoreTerm = true
		case "sleep":
			s := arg()
			var deadline <-chan time.Time
			if s != "inf" {
				secs, err := strconv.ParseFloat(s, 64)
				if err != nil {
					fmt.Fprintln(os.Stderr, "payload: bad sleep:", s)
					os.Exit(64)
				}
				deadline = time.After(time.Duration(secs * float64(time.Second)))
			}
		wait:
			for {
				select {
				case <-deadline:
					break wait
				case <-term:
					if !ignoreTerm {
						fmt.Println("payload: SIGTERM")
						os.Exit(143)
					}
					fmt.Println("payload: ignoring SIGTERM")
				}
			}
		case "serve":
			if err := serve(arg()); err != nil {
				fmt.Fprintln(os.Stderr, "payload:", err)
				os.Exit(70)
			}
		case "dial":
			proto := arg()
			addr := arg()
			fmt.Printf("dial %s: %s\n", addr, dial(proto, addr))
		case "lookup":
			name := arg()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			addrs, err := net.DefaultResolver.LookupHost(ctx, name)
			cancel()
			if err != nil {
				fmt.Printf("lookup %s: error: %v\n", name, err)
			} else {
				fmt.Printf("lookup %s: %s\n", name, strings.Join(addrs, ","))
			}
		case "send":
			addr := arg()
			n, err := strconv.ParseInt(arg(), 10, 64)
			if err != nil {
				os.Exit(64)
			}
			fmt.Printf("send %s: %s\n", addr, send(addr, n, 0))
		case "blast":
			addr := arg()
			secs, err := strconv.ParseFloat(arg(), 64)
			if err != nil {
				os.Exit(64)
			}
			fmt.Printf("blast %s: %s\n", addr, send(addr, -1, time.Duration(secs*float64(time.Second))))
		case "recv":
			addr := arg()
			secs, err := strconv.ParseFloat(arg(), 64)
			if err != nil {
				os.Exit(64)
			}
			fmt.Printf("recv %s: %s\n", addr, recv(addr, time.Duration(secs*float64(time.Second))))
		case "spin":
			go func() {
				for x := uint64(0); ; x++ {
					spun.Store(x)
				}
			}()
		case "alloc":
			n, err := strconv.Atoi(arg())
			if err != nil {
				os.Exit(64)
			}
			for i := 0; i < n; i++ {
				b := make([]byte, 1<<20)
				for j := 0; j < len(b); j += 4096 {
					b[j] = 1
				}
				held = append(held, b)
			}
			fmt.Println("payload: allocated", n, "MiB")
		case "forkbomb":
			forkbomb()
		case "write":
			f := arg()
			if err := os.WriteFile(f, []byte("written by the tenant\n"), 0o600); err != nil {
				fmt.Printf("write %s: %v\n", f, err)
			} else {
				fmt.Printf("write %s: ok\n", f)
			}
		case "fill":
			// fill FILE MIB writes MIB MiB to FILE, synced, and says how
			// far it got.
			f := arg()
			n, err := strconv.Atoi(arg())
			if err != nil {
				os.Exit(64)
			}
			fill(f, n)
		case "exit":
			code, err := strconv.Atoi(arg())
			if err != nil {
				os.Exit(64)
			}
			os.Exit(code)
		default:
			fmt.Fprintf(os.Stderr, "payload: unknown command %q\n", cmd)
			os.Exit(64)
		}
	}
}

// fill writes n MiB to path, syncing each, and prints how many MiB were
// written and the error that stopped it, if any.
func fill(path string, n int) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		fmt.Printf("fill %s: error: %v\n", path, err)
		return
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	for i := 0; i < n; i++ {
		if _, err := f.Write(chunk); err != nil {
			fmt.Printf("fill %s: error after %d MiB: %v\n", path, i, err)
			return
		}
		if err := f.Sync(); err != nil {
			fmt.Printf("fill %s: error after %d MiB: %v\n", path, i, err)
			return
		}
	}
	fmt.Printf("fill %s: wrote %d MiB\n", path, n)
}

// held keeps what alloc allocated reachable.
var held [][]byte

// spun is where spin's loop writes, so that it is not optimised away.
var spun atomic.Uint64

// recv reads from addr over TCP for d.
func recv(addr string, d time.Duration) string {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "error: " + err.Error()
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 256<<10)
	var got int64
	var first, last time.Time
	for {
		k, err := c.Read(buf)
		if k > 0 {
			if got == 0 {
				first = time.Now()
			}
			got += int64(k)
			last = time.Now()
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			return fmt.Sprintf("error after %d bytes: %v", got, err)
		}
	}
	return fmt.Sprintf("%d bytes in %d ms", got, last.Sub(first).Milliseconds())
}

// send writes n bytes (n < 0: as many as it can for d) to addr over TCP.
func send(addr string, n int64, d time.Duration) string {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "error: " + err.Error()
	}
	buf := make([]byte, 64<<10)
	var sent int64
	deadline := time.Now().Add(d)
	for n < 0 || sent < n {
		chunk := buf
		if n >= 0 && n-sent < int64(len(chunk)) {
			chunk = chunk[:n-sent]
		}
		if n < 0 {
			if time.Now().After(deadline) {
				break
			}
			_ = c.SetWriteDeadline(deadline)
		}
		k, err := c.Write(chunk)
		sent += int64(k)
		if err != nil {
			if n < 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			c.Close()
			return fmt.Sprintf("error after %d bytes: %v", sent, err)
		}
	}
	if err := c.Close(); err != nil {
		return fmt.Sprintf("error after %d bytes: %v", sent, err)
	}
	return fmt.Sprintf("%d bytes", sent)
}

// forkbomb starts copies of itself as fast as it can, each doing the same;
// failures (the pids limit) are retried at once.
func forkbomb() {
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	fmt.Println("payload: forkbomb")
	for {
		cmd := exec.Command(self, "forkbomb")
		if cmd.Start() == nil {
			go cmd.Wait()
		}
	}
}

func serve(port string) error {
	l, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", ":"+port)
	if err != nil {
		return err
	}
	answer := func(client string) []byte {
		return []byte(fmt.Sprintf("HOST_PORT_TCP_%s=%s HOST_PORT_UDP_%s=%s from %s\n",
			port, os.Getenv("HOST_PORT_TCP_"+port), port, os.Getenv("HOST_PORT_UDP_"+port), client))
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			c.Write(answer(host))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(from.String())
			pc.WriteTo(answer(host), from)
		}
	}()
	return nil
}

// dial connects to addr and returns the first line it answers, or the
// error.
func dial(proto, addr string) string {
	c, err := net.DialTimeout(proto, addr, 3*time.Second)
	if err != nil {
		return "error: " + err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if proto == "udp" {
		if _, err := c.Write([]byte("ping")); err != nil {
			return "error: " + err.Error()
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && line == "" {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(line)
}
