//go:build linux

package netnstest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// Accepted is a connection one of the watched listeners accepted.
type Accepted struct {
	Listener string
	Conn     net.Conn
}

// Acceptor runs an accept loop per listener and reports every accepted
// connection, labelled with its listener's name, on one channel, so a test
// can assert where a connection landed.
type Acceptor struct {
	C  chan Accepted
	wg sync.WaitGroup
	mu sync.Mutex
	ls []net.Listener
	cs []net.Conn
}

// NewAcceptor returns an Acceptor whose listeners and accepted connections
// are closed, and accept loops waited for, at test cleanup.
func NewAcceptor(tb testing.TB) *Acceptor {
	a := &Acceptor{C: make(chan Accepted, 64)}
	tb.Cleanup(a.Close)
	return a
}

// Watch starts accepting on ln, labelled name.
func (a *Acceptor) Watch(name string, ln net.Listener) {
	a.mu.Lock()
	a.ls = append(a.ls, ln)
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.mu.Lock()
			a.cs = append(a.cs, c)
			a.mu.Unlock()
			select {
			case a.C <- Accepted{Listener: name, Conn: c}:
			default:
				_ = c.Close()
			}
		}
	}()
}

// Close closes every listener and accepted connection and waits for the
// accept loops.
func (a *Acceptor) Close() {
	a.mu.Lock()
	for _, ln := range a.ls {
		_ = ln.Close()
	}
	for _, c := range a.cs {
		_ = c.Close()
	}
	a.ls, a.cs = nil, nil
	a.mu.Unlock()
	a.wg.Wait()
}

// Expect waits for the next accepted connection and fails the test unless it
// arrived on the listener named want.
func (a *Acceptor) Expect(tb testing.TB, want string) net.Conn {
	tb.Helper()
	select {
	case acc := <-a.C:
		if acc.Listener != want {
			tb.Fatalf("connection from %s to %s landed on %q, want %q", acc.Conn.RemoteAddr(), acc.Conn.LocalAddr(), acc.Listener, want)
		}
		return acc.Conn
	case <-time.After(5 * time.Second):
		tb.Fatalf("no connection accepted on %q within 5s", want)
		return nil
	}
}

// Echo copies everything c receives back to it until EOF, then closes c.
func Echo(c net.Conn) {
	go func() {
		defer c.Close()
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
}

// RoundTrip writes msg to c and reads the same number of bytes back.
func RoundTrip(c net.Conn, msg string) (string, error) {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			return string(buf[:n]), fmt.Errorf("read: %w", err)
		}
	}
	return string(buf), nil
}

// DumpRuleset logs `nft list ruleset` and `ip rule` of ns when the test has
// failed, for diagnosis (it is the only place tests run external tools).
func DumpRuleset(tb testing.TB, ns *podns.NS) {
	tb.Helper()
	tb.Cleanup(func() {
		if !tb.Failed() {
			return
		}
		nsPath := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.Fd())
		for _, args := range [][]string{{"nft", "list", "ruleset"}, {"ip", "rule"}, {"ip", "route", "show", "table", "all"}} {
			cmd := exec.Command("nsenter", append([]string{"--net=" + nsPath}, args...)...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				tb.Logf("%v: %v", args, err)
				continue
			}
			tb.Logf("%v in %s:\n%s", args, ns.Name(), out)
		}
	})
}
