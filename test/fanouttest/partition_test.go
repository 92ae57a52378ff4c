package fanouttest

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// echo starts a line echo server on loopback and returns its address and
// the count of connections it accepted.
func echo(t *testing.T) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String(), &accepted
}

// TestPartition checks that a Cut holds every byte of an open connection
// and every new connection back without closing anything, and that Heal
// delivers what was held back.
func TestPartition(t *testing.T) {
	addr, accepted := echo(t)
	p := NewPartition(t, "tcp", addr)
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	roundTrip := func(c net.Conn, r *bufio.Reader, line string) (string, error) {
		if _, err := io.WriteString(c, line+"\n"); err != nil {
			return "", err
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		return r.ReadString('\n')
	}
	old, oldR := dial()
	if got, err := roundTrip(old, oldR, "before"); err != nil || got != "before\n" {
		t.Fatalf("before the cut: %q, %v", got, err)
	}

	p.Cut()
	if got, err := roundTrip(old, oldR, "during"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an open connection passed bytes during the cut: %q, %v", got, err)
	}
	fresh, freshR := dial() // accepted by the proxy, not forwarded
	if got, err := roundTrip(fresh, freshR, "new"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a new connection passed bytes during the cut: %q, %v", got, err)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("the target accepted %d connections during the cut, want only the first", n)
	}

	p.Heal()
	for _, c := range []struct {
		r    *bufio.Reader
		conn net.Conn
		want string
	}{{oldR, old, "during\n"}, {freshR, fresh, "new\n"}} {
		c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if got, err := c.r.ReadString('\n'); err != nil || got != c.want {
			t.Errorf("after the heal: %q, %v; want %q, held back by the cut", got, err, c.want)
		}
	}
	if got, err := roundTrip(old, oldR, "after"); err != nil || got != "after\n" {
		t.Errorf("after the heal: %q, %v", got, err)
	}
}
